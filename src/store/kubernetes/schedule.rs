//! The Kubernetes store's schedule: a watch of every Delivery, the
//! unfinished ones in a timer queue at their due time, handed to the engine
//! as they come due.
//!
//! Only unfinished Deliveries are held in memory, and those due more than
//! 30 s ahead only in brief (read again when due); finished ones pass
//! through the watch and are dropped. State lives in the Delivery status, so
//! a restarted engine resumes every unfinished delivery at `nextAttemptAt`.
//! Ordering keys are kept here too: a due delivery whose key has an earlier
//! unfinished one waits (and says so in its status) until that one ends.

use super::{Objects, ordering};
use crate::metrics::Metrics;
use crate::resources::delivery::Delivery;
use crate::resources::{Hub, Webhook};
use crate::store::retention;
use crate::store::{DEFER, Due, Limits, Loaded, Queue, Settled, StoreError, due_at};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::api::{GetParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::time::{DelayQueue, delay_queue};

/// The latest a retry can be due: the longest retry window allowed, plus
/// slack. A later `nextAttemptAt` is nonsense written by someone else.
const LATEST_DUE: Duration = Duration::from_secs(169 * 3600);
/// A delivery read when due counts as due this early (clocks of writers differ).
const DUE_TOLERANCE: Duration = Duration::from_secs(1);
/// How often finished Deliveries are checked against the retention policy.
const RETENTION_SWEEP: Duration = Duration::from_secs(5);
/// How long one read may take before it counts as failed.
const API_CALL_TIMEOUT: Duration = Duration::from_secs(10);

type Key = (String, String);

/// Where a tracked delivery is.
enum Slot {
    Queued {
        timer: delay_queue::Key,
        delivery: Held,
    },
    /// Handed to the engine as `sent`; `latest` is the newest object seen
    /// meanwhile.
    InFlight {
        sent: Held,
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

fn attempts(delivery: &Delivery) -> u32 {
    delivery.status.as_ref().map(|s| s.attempt_count).unwrap_or(0)
}

/// What the engine tells the schedule.
enum Command {
    Settle(Key, Box<Settled>),
    Hasten(String, String),
}

/// The schedule as the engine sees it; the watch runs on its own task
/// until the engine lets go of it.
pub struct Schedule {
    objects: Objects,
    commands: mpsc::UnboundedSender<Command>,
    due: tokio::sync::Mutex<mpsc::UnboundedReceiver<Due>>,
}

/// What the schedule's task needs.
struct Task {
    client: Client,
    webhooks: Store<Webhook>,
    hubs: Store<Hub>,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    due: mpsc::UnboundedSender<Due>,
}

impl Schedule {
    /// Starts watching the Deliveries of `namespace` (of all, `None`).
    pub fn start(scope: crate::store::Scope) -> Arc<Schedule> {
        let crate::store::Scope {
            client,
            namespace,
            webhooks,
            hubs,
            metrics,
        } = scope;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (due_tx, due_rx) = mpsc::unbounded_channel();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "hookrelay".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        let task = Task {
            client: client.clone(),
            webhooks,
            hubs,
            metrics,
            recorder,
            due: due_tx,
        };
        tokio::spawn(task.run(namespace, command_rx));
        Arc::new(Schedule {
            objects: Objects::new(client),
            commands,
            due: tokio::sync::Mutex::new(due_rx),
        })
    }
}

#[async_trait::async_trait]
impl Queue for Schedule {
    async fn next(
        &self,
        _claimant: &str,
        _room: usize,
        _lease: Duration,
        _limits: &Limits,
    ) -> Result<Vec<Due>, StoreError> {
        let mut due = self.due.lock().await;
        let Some(first) = due.recv().await else {
            return Err(StoreError::Api {
                code: None,
                message: "the schedule stopped".into(),
            });
        };
        let mut batch = vec![first];
        while let Ok(more) = due.try_recv() {
            batch.push(more);
        }
        Ok(batch)
    }

    /// From the API server's cache but never older than the version the
    /// schedule saw: as fresh as holding it whole would have been, without
    /// a round trip to etcd.
    async fn load(&self, due: &Due) -> Result<Loaded, StoreError> {
        let params = due.version.as_deref().map(GetParams::at).unwrap_or_default();
        let api = self.objects.api(Some(&due.namespace));
        let read = match tokio::time::timeout(API_CALL_TIMEOUT, api.get_with(&due.name, &params)).await {
            Ok(Ok(d)) => d,
            Ok(Err(kube::Error::Api(e))) if e.code == 404 => return Ok(Loaded::Gone),
            Ok(Err(e)) => {
                return Err(StoreError::Api {
                    code: None,
                    message: format!("reading Delivery {}: {e}", due.name),
                });
            }
            Err(_) => {
                return Err(StoreError::Api {
                    code: None,
                    message: format!("reading Delivery {}: no answer within {API_CALL_TIMEOUT:?}", due.name),
                });
            }
        };
        Ok(match due_at(&read) {
            Some(at) if due.early || at <= Timestamp::now() + DUE_TOLERANCE => {
                Loaded::Due(Arc::unwrap_or_clone(slim(read)))
            }
            _ => Loaded::NotDue(read),
        })
    }

    async fn settle(&self, due: &Due, _claimant: &str, settled: Settled) {
        let _ = self.commands.send(Command::Settle(
            (due.namespace.clone(), due.name.clone()),
            Box::new(settled),
        ));
    }

    async fn hasten(&self, namespace: &str, webhook: &str) {
        let _ = self.commands.send(Command::Hasten(namespace.into(), webhook.into()));
    }

    /// The task keeps retention and the pending gauge itself.
    async fn housekeeping(&self, _round: u64) {}
}

impl Task {
    /// Schedules until the engine lets go of the schedule.
    async fn run(self, namespace: Option<String>, mut commands: mpsc::UnboundedReceiver<Command>) {
        // Each Delivery is decoded on its own: one that cannot be is
        // reported and skipped, never fatal to the watch.
        let api: Api<DeserializeGuard<Delivery>> =
            crate::kubernetes::namespaced_api(&self.client, namespace.as_deref());
        let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
        let mut state = Tracking::default();
        // Keys seen during a (re)list; those not seen were deleted meanwhile.
        let mut relisting: Option<HashSet<Key>> = None;
        let mut finished = retention::Index::default();
        let mut reported_pending = 0i64;
        let mut sweep = tokio::time::interval(RETENTION_SWEEP);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => break,
                    Some(Command::Settle(key, settled)) => self.settle(key, *settled, &mut state),
                    Some(Command::Hasten(ns, webhook)) => state.hasten(&ns, &webhook),
                },
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
                        let early = state.cancelling.remove(&key);
                        let due = Due {
                            namespace: key.0.clone(),
                            name: key.1.clone(),
                            webhook: delivery.webhook().to_string(),
                            delivery: match &delivery {
                                Held::Whole(d) => Some(d.clone()),
                                Held::Brief(_) => None,
                            },
                            version: delivery.resource_version(),
                            early,
                            claimed_until: None,
                        };
                        state.tracked.insert(key, Slot::InFlight { sent: delivery, latest: None });
                        let _ = self.due.send(due);
                    }
                }
                _ = sweep.tick() => {
                    let policy_of = |ns: &str, webhook: &str| {
                        let hub = self
                            .webhooks
                            .get(&ObjectRef::new(webhook).within(ns))
                            .and_then(|w| self.hubs.get(&ObjectRef::new(&w.spec.hub).within(ns)));
                        retention::Policy::of(hub.as_deref())
                    };
                    let expired = finished.sweep(policy_of, Timestamp::now());
                    if !expired.is_empty() {
                        tokio::spawn(delete_expired(self.client.clone(), expired));
                    }
                }
            }
            // Several engines (one per namespace) share the gauge: add deltas.
            let pending = state.tracked.len() as i64;
            self.metrics.pending.inc_by(pending - reported_pending);
            reported_pending = pending;
        }
        self.metrics.pending.dec_by(reported_pending);
    }

    /// What to do once the engine is done with a due delivery.
    fn settle(&self, key: Key, settled: Settled, state: &mut Tracking) {
        // Only its in-flight slot: if the key was forgotten meanwhile (a
        // relist) and queued again, that slot and its timer stay.
        let (sent, latest) = match state.tracked.get(&key) {
            Some(Slot::InFlight { .. }) => match state.tracked.remove(&key) {
                Some(Slot::InFlight { sent, latest }) => (Some(sent), latest),
                _ => unreachable!("checked just above"),
            },
            _ => (None, None),
        };
        match settled {
            // The stored object is newer than anything the watch delivered
            // during the attempt.
            Settled::Recorded(stored) | Settled::Superseded(stored) => self.consider(slim(stored), state),
            Settled::Gone | Settled::NotSent => {}
            Settled::Deferred => {
                if let Some(delivery) = latest.map(Held::Whole).or(sent) {
                    let timer = state.queue.insert(key.clone(), DEFER);
                    state.tracked.insert(key, Slot::Queued { timer, delivery });
                }
            }
            Settled::Unrecorded(version) => {
                // Not attempted again until the object changes: a record
                // the API server refuses must not become a resend loop.
                let version = match latest {
                    Some(d) => d.resource_version(),
                    None => version.or_else(|| sent.and_then(|s| s.resource_version())),
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
            Some(Slot::InFlight { latest, .. }) => {
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
        // Brought forward (its webhook was deactivated): it stays due now
        // whatever a late watch event says its retry was.
        let delay = if state.cancelling.contains(&key) {
            Duration::ZERO
        } else {
            delay
        };
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
        let document = delivery.event_document().ok()?;
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
}

/// What the schedule tracks and when each is due.
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
    /// Brings a deactivated webhook's queued deliveries forward: attempted
    /// now, which records them Cancelled with the reason.
    fn hasten(&mut self, ns: &str, webhook: &str) {
        for (k, slot) in self.tracked.iter_mut() {
            if let Slot::Queued { timer, delivery } = slot
                && k.0 == ns
                && delivery.webhook() == webhook
            {
                self.queue.reset(timer, Duration::ZERO);
                self.cancelling.insert(k.clone());
            }
        }
    }

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
    use crate::resources::delivery::{DeliverySpec, DeliveryStatus, EventRef, Phase};
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
