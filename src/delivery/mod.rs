//! The delivery engine: watches Deliveries, keeps the unfinished ones in a
//! timer queue at their due time, and makes attempts under a per-webhook and
//! a global concurrency limit, so a slow webhook never holds up another.
//!
//! Only unfinished Deliveries are held in memory; finished ones pass through
//! the watch and are dropped. State lives in the Delivery status, so a
//! restarted engine resumes every unfinished delivery at `nextAttemptAt`.

pub mod attempt;
pub mod http;
pub mod request;
pub mod retention;
pub mod retry;
pub mod signing;
pub mod summary;

use crate::metrics::{Metrics, StateLabel};
use crate::resources::delivery::{Delivery, Phase};
use crate::resources::webhook::{DEACTIVATED_ANNOTATION, Deactivation, DeactivationRecord};
use crate::resources::{Hub, Webhook};
use crate::secret_cache::SecretCache;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::time::{DelayQueue, delay_queue};

/// Requests in flight to one webhook unless its hub says otherwise.
pub const DEFAULT_CONCURRENCY_PER_WEBHOOK: u32 = 4;
/// Wait before re-making an attempt whose result could not be recorded.
const RECORD_RETRY: Duration = Duration::from_secs(5);
/// How often finished Deliveries are checked against the retention policy.
const RETENTION_SWEEP: Duration = Duration::from_secs(5);

type Key = (String, String);

/// Shared by every attempt.
pub struct Engine {
    pub(crate) client: Client,
    pub(crate) webhooks: Store<Webhook>,
    pub(crate) hubs: Store<Hub>,
    pub(crate) secrets: Arc<SecretCache>,
    pub(crate) http: http::Clients,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) summaries: summary::Summaries,
    global: Arc<Semaphore>,
    per_webhook: Mutex<HashMap<Key, (u32, Arc<Semaphore>)>>,
    /// Webhooks this engine deactivated: treated as inactive until the cache
    /// shows a generation newer than the deactivating write (`None` while
    /// that write is under way), so no attempt slips out in between.
    deactivated: Mutex<HashMap<Key, (Option<i64>, String)>>,
    recorder: Recorder,
    /// Set on shutdown: attempts not yet started are not started.
    stopping: AtomicBool,
    /// This engine's share of the webhook gauges (engines share them).
    reported_webhooks: Mutex<(i64, i64)>,
    global_size: usize,
}

/// How long shutdown waits for attempts in flight to be recorded.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Where a tracked delivery is.
enum Slot {
    Queued {
        timer: delay_queue::Key,
        delivery: Arc<Delivery>,
    },
    /// An attempt is running; `latest` is the newest object seen meanwhile.
    InFlight { latest: Option<Arc<Delivery>> },
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
        global: Arc<Semaphore>,
    ) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "hookrelay".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Arc::new(Self {
            summaries: summary::Summaries::new(client.clone(), webhooks.clone()),
            client,
            webhooks,
            hubs,
            secrets,
            http: http::Clients::default(),
            metrics,
            global_size: global.available_permits(),
            global,
            per_webhook: Mutex::default(),
            deactivated: Mutex::default(),
            recorder,
            stopping: AtomicBool::new(false),
            reported_webhooks: Mutex::default(),
        })
    }

    /// Why attempts for `webhook` must not be sent, if they must not.
    pub fn inactive_reason(&self, webhook: &Webhook) -> Option<String> {
        let key = (webhook.namespace().unwrap_or_default(), webhook.name_any());
        let describe = |reason: &str, message: &str| format!("the webhook was deactivated ({reason}): {message}");
        if let Some((threshold, why)) = self.deactivated.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && threshold.is_none_or(|t| webhook.metadata.generation.unwrap_or(0) <= t)
        {
            return Some(why.clone());
        }
        if webhook.spec.active {
            return None;
        }
        Some(match webhook.status.as_ref().and_then(|s| s.deactivation.as_ref()) {
            Some(d) => describe(&d.reason, &d.message),
            None => "the webhook is inactive (spec.active is false)".to_string(),
        })
    }

    /// Deactivates a webhook after a delivery ran out of attempts or got 410
    /// Gone: records why in its status, sets `spec.active: false`, publishes
    /// a Warning Event. Retried until it succeeds: the decision is made.
    async fn deactivate(&self, ns: &str, webhook: &str, deactivation: Deactivation) {
        let key = (ns.to_string(), webhook.to_string());
        let why = format!(
            "the webhook was deactivated ({}): {}",
            deactivation.reason, deactivation.message
        );
        self.deactivated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), (None, why));
        let api: Api<Webhook> = Api::namespaced(self.client.clone(), ns);
        let params = PatchParams {
            field_manager: Some(crate::resources::FIELD_MANAGER.into()),
            ..Default::default()
        };
        let record = DeactivationRecord {
            deactivation: deactivation.clone(),
            at: Time(Timestamp::now()),
        };
        // One write: the switch and its reason change together.
        let patch = serde_json::json!({
            "metadata": { "annotations": {
                DEACTIVATED_ANNOTATION: serde_json::to_string(&record).expect("serialisable"),
            }},
            "spec": { "active": false },
        });
        let mut delay = Duration::from_millis(200);
        let generation = loop {
            match api.patch(webhook, &params, &Patch::Merge(&patch)).await {
                Ok(w) => break w.metadata.generation,
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(e) => {
                    tracing::warn!(webhook, namespace = ns, error = %e, "could not deactivate the webhook; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        };
        if let Some(entry) = self.deactivated.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&key) {
            entry.0 = Some(generation.unwrap_or(0));
        }
        tracing::warn!(webhook, namespace = ns, reason = %deactivation.reason, delivery = %deactivation.delivery, "webhook deactivated");
        let event = Event {
            type_: EventType::Warning,
            reason: deactivation.reason.clone(),
            note: Some(deactivation.message.clone()),
            action: "Deactivate".into(),
            secondary: None,
        };
        let reference = ObjectReference {
            api_version: Some(Webhook::api_version(&()).into()),
            kind: Some(Webhook::kind(&()).into()),
            name: Some(webhook.to_string()),
            namespace: Some(ns.to_string()),
            ..Default::default()
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, "could not publish the deactivation event");
        }
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

    /// The limiter of one webhook, sized from its hub's setting.
    fn webhook_limit(&self, ns: &str, webhook: &str) -> Arc<Semaphore> {
        let size = self
            .webhooks
            .get(&ObjectRef::new(webhook).within(ns))
            .and_then(|w| self.hubs.get(&ObjectRef::new(&w.spec.hub).within(ns)))
            .and_then(|h| h.spec.delivery.as_ref().and_then(|d| d.concurrency_per_webhook))
            .unwrap_or(DEFAULT_CONCURRENCY_PER_WEBHOOK);
        let mut limits = self.per_webhook.lock().unwrap_or_else(|e| e.into_inner());
        let entry = limits
            .entry((ns.to_string(), webhook.to_string()))
            .or_insert_with(|| (size, Arc::new(Semaphore::new(size as usize))));
        if entry.0 != size {
            *entry = (size, Arc::new(Semaphore::new(size as usize)));
        }
        entry.1.clone()
    }

    /// Delivers until `shutdown` resolves. `namespace` limits the watch.
    pub async fn run(self: Arc<Self>, namespace: Option<String>, shutdown: impl std::future::Future<Output = ()>) {
        let api: Api<Delivery> = match &namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
        let (done_tx, mut done_rx) =
            mpsc::unbounded_channel::<(Key, Result<attempt::Done, attempt::Error>, Arc<Delivery>)>();
        let mut queue: DelayQueue<Key> = DelayQueue::new();
        let mut tracked: HashMap<Key, Slot> = HashMap::new();
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
                        watcher::Event::InitApply(d) => {
                            if let Some(seen) = relisting.as_mut() {
                                seen.insert(key_of(&d));
                            }
                            index_finished(&d, &mut finished);
                            self.consider(slim(d), &mut tracked, &mut queue);
                        }
                        watcher::Event::InitDone => {
                            if let Some(seen) = relisting.take() {
                                let gone: Vec<Key> = tracked.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                                for key in gone {
                                    untrack(&key, &mut tracked, &mut queue);
                                }
                            }
                        }
                        watcher::Event::Apply(d) => {
                            index_finished(&d, &mut finished);
                            self.consider(slim(d), &mut tracked, &mut queue);
                        }
                        watcher::Event::Delete(d) => {
                            finished.forget(&d);
                            untrack(&key_of(&d), &mut tracked, &mut queue);
                        }
                    }
                }
                Some(expired) = queue.next(), if !queue.is_empty() => {
                    let key = expired.into_inner();
                    if let Some(Slot::Queued { delivery, .. }) = tracked.remove(&key) {
                        tracked.insert(key.clone(), Slot::InFlight { latest: None });
                        self.clone().spawn_attempt(key, delivery, done_tx.clone());
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
                Some((key, result, sent)) = done_rx.recv() => {
                    let latest = match tracked.remove(&key) {
                        Some(Slot::InFlight { latest }) => latest,
                        _ => None,
                    };
                    match result {
                        Ok(attempt::Done::Recorded(stored, deactivation)) => {
                            // The stored object is newer than anything the
                            // watch delivered during the attempt.
                            self.consider(slim(*stored), &mut tracked, &mut queue);
                            if let Some(deactivation) = deactivation {
                                let (ns, webhook) = (key.0.clone(), sent.spec.webhook.clone());
                                let engine = self.clone();
                                tokio::spawn(async move { engine.deactivate(&ns, &webhook, deactivation).await });
                                // Its other pending deliveries: attempted now,
                                // which records them Cancelled with the reason.
                                for (k, slot) in tracked.iter_mut() {
                                    if let Slot::Queued { timer, delivery } = slot
                                        && k.0 == key.0
                                        && delivery.spec.webhook == sent.spec.webhook
                                    {
                                        queue.reset(timer, Duration::ZERO);
                                    }
                                }
                            }
                        }
                        Ok(attempt::Done::Gone) => {}
                        Err(e) => {
                            tracing::warn!(delivery = %key.1, namespace = %key.0, error = %e, "attempt not recorded; it will be made again");
                            let timer = queue.insert(key.clone(), RECORD_RETRY);
                            tracked.insert(key, Slot::Queued { timer, delivery: latest.unwrap_or(sent) });
                        }
                    }
                }
            }
            // Several engines (one per namespace) share the gauge: add deltas.
            let pending = tracked.len() as i64;
            self.metrics.pending.inc_by(pending - reported_pending);
            reported_pending = pending;
        }
        // Let attempts in flight finish and be recorded, so no request is
        // left unrecorded (it would be sent again by the next leader).
        self.stopping.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.global.available_permits() < self.global_size && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.metrics.pending.dec_by(reported_pending);
        summaries.abort();
        self.summaries.flush().await;
    }

    /// Tracks, reschedules or drops a delivery after seeing its latest state.
    fn consider(&self, delivery: Arc<Delivery>, tracked: &mut HashMap<Key, Slot>, queue: &mut DelayQueue<Key>) {
        let key = key_of(&delivery);
        match tracked.get_mut(&key) {
            Some(Slot::InFlight { latest }) => {
                *latest = Some(delivery);
                return;
            }
            Some(Slot::Queued { delivery: queued, .. }) if attempts(&delivery) < attempts(queued) => {
                // An older state than the one we hold (a late watch event).
                return;
            }
            _ => {}
        }
        let Some(due) = due_at(&delivery) else {
            untrack(&key, tracked, queue);
            return;
        };
        let delay = Duration::try_from(due.duration_since(Timestamp::now())).unwrap_or_default();
        match tracked.get_mut(&key) {
            Some(Slot::Queued {
                timer,
                delivery: queued,
            }) => {
                queue.reset(timer, delay);
                *queued = delivery;
            }
            _ => {
                let timer = queue.insert(key.clone(), delay);
                tracked.insert(key, Slot::Queued { timer, delivery });
            }
        }
    }

    fn spawn_attempt(
        self: Arc<Self>,
        key: Key,
        delivery: Arc<Delivery>,
        done: mpsc::UnboundedSender<(Key, Result<attempt::Done, attempt::Error>, Arc<Delivery>)>,
    ) {
        tokio::spawn(async move {
            // The webhook's own limit first: waiting for it holds no global
            // permit, so a slow webhook cannot starve the others.
            let webhook_limit = self.webhook_limit(&key.0, &delivery.spec.webhook);
            let _webhook_permit = webhook_limit.acquire_owned().await;
            let _global_permit = self.global.clone().acquire_owned().await;
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let result = attempt::run(&self, &delivery).await;
            let _ = done.send((key, result, delivery));
        });
    }
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

fn untrack(key: &Key, tracked: &mut HashMap<Key, Slot>, queue: &mut DelayQueue<Key>) {
    if let Some(Slot::Queued { timer, .. }) = tracked.remove(key) {
        queue.remove(&timer);
    }
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
                payload: serde_json::json!({}),
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
