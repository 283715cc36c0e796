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
use kube::runtime::events::{Recorder, Reporter};
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
/// How often held deliveries of paused webhooks are checked for a resume.
const RESUME_CHECK: Duration = Duration::from_secs(1);
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

/// Orders two resourceVersions of the same resource: decimal integers
/// without leading zeros, comparable since Kubernetes 1.35 (KEP-5504).
/// `None` when either is not one (a server that keeps them opaque).
fn compare_versions(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    let integer = |v: &str| !v.is_empty() && !v.starts_with('0') && v.bytes().all(|c| c.is_ascii_digit());
    (integer(a) && integer(b)).then(|| a.len().cmp(&b.len()).then_with(|| a.cmp(b)))
}

/// Whether `delivery` is an older state of the same Delivery than one at
/// `version` with `attempts_made`: by resourceVersion, or where those do
/// not compare, by attempts made.
fn is_older(delivery: &Delivery, version: Option<String>, attempts_made: u32) -> bool {
    let own = delivery.resource_version();
    match compare_versions(
        own.as_deref().unwrap_or_default(),
        version.as_deref().unwrap_or_default(),
    ) {
        Some(order) => order == std::cmp::Ordering::Less,
        None => attempts(delivery) < attempts_made,
    }
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
        let mut resume = tokio::time::interval(RESUME_CHECK);
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
                            state.listing = true;
                            finished.clear();
                        }
                        watcher::Event::InitApply(DeserializeGuard(d)) => {
                            let Some(d) = self.decoded(d) else { continue };
                            if let Some(seen) = relisting.as_mut() {
                                seen.insert(key_of(&d));
                            }
                            self.watched(d, &mut state, &mut finished);
                        }
                        watcher::Event::InitDone => {
                            if let Some(seen) = relisting.take() {
                                let gone: Vec<Key> = state.tracked.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                                for key in gone {
                                    self.forget(&key, &mut state);
                                }
                                state.settled.retain(|k, _| seen.contains(k));
                            }
                            // Every ordering group is whole again.
                            state.listing = false;
                            for key in std::mem::take(&mut state.after_list) {
                                state.release(key);
                            }
                        }
                        watcher::Event::Apply(DeserializeGuard(d)) => {
                            let Some(d) = self.decoded(d) else { continue };
                            self.watched(d, &mut state, &mut finished);
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
                            state.settled.remove(&key);
                            self.forget(&key, &mut state);
                        }
                    }
                }
                Some(expired) = state.queue.next(), if !state.queue.is_empty() => {
                    self.came_due(expired.into_inner(), &mut state);
                }
                _ = resume.tick(), if !state.paused.is_empty() => self.resume(&mut state),
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
            Settled::Recorded(stored) | Settled::Superseded(stored) => {
                // Finished before the watch showed it: until it does, what
                // the watch shows of this delivery is its past. (Its slot
                // is gone when the watch showed it finished or deleted.)
                let watch_caught_up = sent.is_none()
                    || latest
                        .as_ref()
                        .is_some_and(|l| !is_older(&stored, l.resource_version(), attempts(l)));
                if due_at(&stored).is_none()
                    && !watch_caught_up
                    && let Some(version) = stored.resource_version()
                {
                    state.settled.insert(key.clone(), version);
                }
                self.consider(slim(stored), state)
            }
            Settled::Gone | Settled::NotSent => {}
            // Paused meanwhile: held with the webhook's others.
            Settled::Paused => {
                if let Some(delivery) = latest.map(Held::Whole).or(sent) {
                    self.hand_out(key, delivery, state);
                }
            }
            Settled::Deferred | Settled::Later(_) => {
                let after = match settled {
                    Settled::Later(after) => after,
                    _ => DEFER,
                };
                if let Some(delivery) = latest.map(Held::Whole).or(sent) {
                    let timer = state.queue.insert(key.clone(), after);
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

    /// A Delivery as the watch shows it. The watch can lag behind the
    /// engine's own records (its events queue up behind a busy API server),
    /// and a relist may be served from a cache older than a record just
    /// written: a state older than one the engine settled is its past, and
    /// acting on it would send the delivery again.
    fn watched(&self, delivery: Delivery, state: &mut Tracking, finished: &mut retention::Index) {
        let key = key_of(&delivery);
        if let Some(settled) = state.settled.get(&key) {
            if compare_versions(delivery.resource_version().as_deref().unwrap_or_default(), settled)
                == Some(std::cmp::Ordering::Less)
            {
                return;
            }
            // Caught up (or versions that do not compare: trust the watch).
            state.settled.remove(&key);
        }
        if delivery.status.is_none() {
            tracing::debug!(target: crate::metrics::STAGES, delivery = %key.1, stage = "seen", "a new delivery reached the schedule");
        }
        index_finished(&delivery, finished);
        self.consider(slim(delivery), state);
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
            Some(Slot::InFlight { sent, latest }) => {
                let (version, made) = match latest {
                    Some(l) => (l.resource_version(), attempts(l)),
                    None => (sent.resource_version(), sent.attempts()),
                };
                if !is_older(&delivery, version, made) {
                    *latest = Some(delivery);
                }
                return;
            }
            Some(Slot::Waiting { delivery: waiting, .. }) => {
                // Still waiting for the earlier one, for as long as that
                // takes: in brief.
                *waiting = Held::brief(&delivery);
                return;
            }
            Some(Slot::Queued { delivery: queued, .. })
                if is_older(&delivery, queued.resource_version(), queued.attempts()) =>
            {
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
        if let Some(next) = state.order.leave(key) {
            state.release(next);
        }
    }

    /// A queued delivery whose time has come: handed to the engine unless
    /// an earlier one of its ordering key is unfinished. During a list an
    /// ordered one waits for the list's end: its group is whole only then
    /// (an earlier delivery of its key may not have been listed yet).
    fn came_due(&self, key: Key, state: &mut Tracking) {
        let Some(Slot::Queued { delivery, .. }) = state.tracked.remove(&key) else {
            return;
        };
        self.hand_out(key, delivery, state);
    }

    /// A due delivery, out of the timer queue: handed to the engine unless
    /// its webhook is paused (held until it is resumed) or it must wait for
    /// an earlier one of its ordering key.
    fn hand_out(&self, key: Key, delivery: Held, state: &mut Tracking) {
        let webhook = ObjectRef::new(delivery.webhook()).within(&key.0);
        if self.webhooks.get(&webhook).is_some_and(|w| w.spec.paused) {
            let group = (key.0.clone(), delivery.webhook().to_string());
            state.paused.entry(group).or_default().push(key.clone());
            // In brief: a long pause's backlog costs megabytes, not gigabytes.
            let delivery = match delivery {
                Held::Whole(d) => Held::brief(&d),
                brief => brief,
            };
            state.tracked.insert(key, Slot::Waiting { delivery });
            return;
        }
        if state.listing && state.order.contains(&key) {
            state.tracked.insert(key.clone(), Slot::Waiting { delivery });
            state.after_list.push(key);
            return;
        }
        if let Some(blocker) = state.order.blocker(&key) {
            self.note_waiting(&key, &delivery, &blocker);
            state.tracked.insert(key, Slot::Waiting { delivery });
            return;
        }
        let due = Due {
            namespace: key.0.clone(),
            name: key.1.clone(),
            webhook: delivery.webhook().to_string(),
            delivery: match &delivery {
                Held::Whole(d) => Some(d.clone()),
                Held::Brief(_) => None,
            },
            version: delivery.resource_version(),
            early: state.cancelling.remove(&key),
            claimed_until: None,
        };
        state.tracked.insert(
            key,
            Slot::InFlight {
                sent: delivery,
                latest: None,
            },
        );
        tracing::debug!(target: crate::metrics::STAGES, delivery = %due.name, stage = "handed", "handed to the engine");
        let _ = self.due.send(due);
    }

    /// Hands out, in the order they came due, the held deliveries of
    /// webhooks no longer paused (or gone: their attempt cancels them).
    fn resume(&self, state: &mut Tracking) {
        let resumed: Vec<(String, String)> = state
            .paused
            .keys()
            .filter(|(ns, webhook)| {
                let webhook = ObjectRef::new(webhook).within(ns);
                !self.webhooks.get(&webhook).is_some_and(|w| w.spec.paused)
            })
            .cloned()
            .collect();
        for group in resumed {
            for key in state.paused.remove(&group).unwrap_or_default() {
                // Still held (not finished, deleted or handed out meanwhile).
                if let Some(Slot::Waiting { delivery }) = state.tracked.remove(&key) {
                    self.hand_out(key, delivery, state);
                }
            }
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
        let reference = ObjectReference {
            api_version: Some(Delivery::api_version(&()).into()),
            kind: Some(Delivery::kind(&()).into()),
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            ..Default::default()
        };
        crate::kubernetes::warn_later(&self.recorder, reference, "InvalidDelivery", "Schedule", note);
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
    /// Deliveries the engine finished before the watch showed it, with the
    /// resourceVersion it wrote: older watch events of them are ignored
    /// until the watch shows that version (or a newer one).
    settled: HashMap<Key, String>,
    /// Between a list's start and its end.
    listing: bool,
    /// Ordered deliveries that came due during a list (see `came_due`).
    after_list: Vec<Key>,
    /// Due deliveries of paused webhooks, per webhook in the order they
    /// came due, held (as `Waiting`) until it is resumed.
    paused: HashMap<(String, String), Vec<Key>>,
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

    /// Lets a waiting delivery go now (it is checked again as it comes
    /// due); one in any other state keeps it.
    fn release(&mut self, key: Key) {
        if !matches!(self.tracked.get(&key), Some(Slot::Waiting { .. })) {
            return;
        }
        if let Some(Slot::Waiting { delivery }) = self.tracked.remove(&key) {
            let timer = self.queue.insert(key.clone(), Duration::ZERO);
            self.tracked.insert(key, Slot::Queued { timer, delivery });
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
                    trace: None,
                },
                payload: "{}".into(),
            },
        );
        d.status = status;
        d
    }

    fn at(version: &str, status: Option<DeliveryStatus>) -> Delivery {
        let mut d = delivery(status);
        d.metadata.namespace = Some("ns".into());
        d.metadata.resource_version = Some(version.into());
        d
    }

    fn succeeded() -> Option<DeliveryStatus> {
        Some(DeliveryStatus {
            phase: Phase::Succeeded,
            attempt_count: 1,
            ..Default::default()
        })
    }

    /// A schedule's task with an API server that is never asked (its
    /// webhook "w" in "ns" orders by `$.payload.id`).
    fn task() -> (Task, mpsc::UnboundedReceiver<Due>) {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let (due, due_rx) = mpsc::unbounded_channel();
        let (webhooks, mut writer) = kube::runtime::reflector::store();
        let mut spec = crate::resources::webhook::WebhookSpec::new("h", "W", "https://example.invalid/", &["n"]);
        spec.ordering = Some(crate::resources::webhook::Ordering {
            key: "$.payload.id".into(),
        });
        let mut webhook = Webhook::new("w", spec);
        webhook.metadata.namespace = Some("ns".into());
        writer.apply_watcher_event(&watcher::Event::Apply(webhook));
        let task = Task {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "test".into(),
                    instance: None,
                },
            ),
            client,
            webhooks,
            hubs: kube::runtime::reflector::store().0,
            metrics: Metrics::new(),
            due,
        };
        (task, due_rx)
    }

    fn in_flight(state: &mut Tracking, sent: Delivery) {
        state.tracked.insert(
            key_of(&sent),
            Slot::InFlight {
                sent: Held::Whole(Arc::new(sent)),
                latest: None,
            },
        );
    }

    #[test]
    fn versions_compare_as_integers_or_not_at_all() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("9", "10"), Some(Less));
        assert_eq!(compare_versions("123", "122"), Some(Greater));
        assert_eq!(compare_versions("42", "42"), Some(Equal));
        for opaque in ["", "0", "012", "a1", "1.5"] {
            assert_eq!(compare_versions(opaque, "5"), None, "{opaque:?}");
        }
    }

    #[tokio::test]
    async fn a_lagging_watch_or_a_stale_relist_never_queues_a_finished_delivery_again() {
        let (task, _due) = task();
        let (mut state, mut finished) = (Tracking::default(), retention::Index::default());
        in_flight(&mut state, at("5", None));
        // Recorded before the watch has shown anything of the attempt.
        task.settle(
            ("ns".into(), "d".into()),
            Settled::Recorded(at("6", succeeded())),
            &mut state,
        );
        assert!(state.tracked.is_empty());
        // The watch, behind (or a relist served from a cache older than the
        // record), shows the state the attempt started from.
        task.watched(at("5", None), &mut state, &mut finished);
        assert!(state.tracked.is_empty(), "a state older than the record was queued");
        assert_eq!(state.settled.len(), 1, "kept until the watch shows the record");
        // Then the record itself: caught up.
        task.watched(at("6", succeeded()), &mut state, &mut finished);
        assert!(state.settled.is_empty());
        // Anything newer counts again (a redelivery asked for afterwards).
        let mut redeliver = at("7", succeeded());
        redeliver
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(crate::resources::delivery::REDELIVER_ANNOTATION.into(), "r1".into());
        task.watched(redeliver, &mut state, &mut finished);
        assert!(matches!(
            state.tracked.get(&("ns".to_string(), "d".to_string())),
            Some(Slot::Queued { .. })
        ));
    }

    #[tokio::test]
    async fn a_delivery_whose_record_the_watch_showed_first_leaves_nothing_behind() {
        let (task, _due) = task();
        let (mut state, mut finished) = (Tracking::default(), retention::Index::default());
        in_flight(&mut state, at("5", None));
        task.watched(at("6", succeeded()), &mut state, &mut finished);
        task.settle(
            ("ns".into(), "d".into()),
            Settled::Recorded(at("6", succeeded())),
            &mut state,
        );
        assert!(state.tracked.is_empty());
        assert!(state.settled.is_empty(), "nothing left to wait for");
    }

    #[tokio::test]
    async fn an_older_state_seen_during_an_attempt_is_not_the_one_tried_again() {
        let (task, _due) = task();
        let (mut state, mut finished) = (Tracking::default(), retention::Index::default());
        let retrying = |attempts| {
            Some(DeliveryStatus {
                phase: Phase::Retrying,
                attempt_count: attempts,
                ..Default::default()
            })
        };
        in_flight(&mut state, at("8", retrying(2)));
        task.watched(at("7", retrying(1)), &mut state, &mut finished);
        let Some(Slot::InFlight { latest, .. }) = state.tracked.get(&("ns".to_string(), "d".to_string())) else {
            panic!("not in flight");
        };
        assert!(latest.is_none(), "an older state replaced the newest one known");
    }

    /// Update `version` of item `item`, accepted at `second`, unfinished.
    fn update(item: &str, version: u32, second: i64) -> Delivery {
        let mut d = Delivery::new(
            &format!("{item}{version}"),
            DeliverySpec {
                webhook: "w".into(),
                hub: "h".into(),
                event: EventRef {
                    id: format!("{item}{version}"),
                    name: "n".into(),
                    received_at: MicroTime(Timestamp::from_second(second).unwrap()),
                    trace: None,
                },
                payload: format!(r#"{{"id":"{item}","version":{version}}}"#),
            },
        );
        d.metadata.namespace = Some("ns".into());
        d.metadata.resource_version = Some(format!("{}", 100 + second));
        d
    }

    fn slot(state: &Tracking, name: &str) -> &'static str {
        match state.tracked.get(&("ns".to_string(), name.to_string())) {
            Some(Slot::Queued { .. }) => "queued",
            Some(Slot::InFlight { .. }) => "in flight",
            Some(Slot::Waiting { .. }) => "waiting",
            None => "untracked",
        }
    }

    /// Seen by the watch, then come due at once.
    fn due_now(task: &Task, state: &mut Tracking, finished: &mut retention::Index, d: Delivery) {
        let key = key_of(&d);
        task.watched(d, state, finished);
        task.came_due(key, state);
    }

    #[tokio::test]
    async fn during_a_list_a_later_update_waits_for_the_list_to_end() {
        let (task, mut handed_out) = task();
        let (mut state, mut finished) = (Tracking::default(), retention::Index::default());
        // A restarted controller lists A5 (names sort so) before A1.
        state.listing = true;
        due_now(&task, &mut state, &mut finished, update("A", 5, 50));
        assert_eq!(slot(&state, "A5"), "waiting", "A5 went before A1 was listed");
        task.watched(update("A", 1, 10), &mut state, &mut finished);
        assert!(handed_out.try_recv().is_err());
        // The list ends: A1 goes, A5 waits for it.
        state.listing = false;
        for key in std::mem::take(&mut state.after_list) {
            state.release(key);
        }
        task.came_due(("ns".into(), "A1".into()), &mut state);
        task.came_due(("ns".into(), "A5".into()), &mut state);
        assert_eq!(handed_out.try_recv().unwrap().name, "A1");
        assert!(handed_out.try_recv().is_err(), "A5 went before A1 ended");
        assert_eq!((slot(&state, "A1"), slot(&state, "A5")), ("in flight", "waiting"));
    }

    #[tokio::test]
    async fn a_delivery_leaving_its_group_never_drops_the_next_one() {
        let (task, _due) = task();
        let (mut state, mut finished) = (Tracking::default(), retention::Index::default());
        // A1 queued for its retry; A5 (later) in flight, as an ordering
        // slip could leave them.
        task.watched(update("A", 1, 10), &mut state, &mut finished);
        due_now(&task, &mut state, &mut finished, update("A", 5, 50));
        state.tracked.insert(
            ("ns".into(), "A5".into()),
            Slot::InFlight {
                sent: Held::Whole(Arc::new(update("A", 5, 50))),
                latest: None,
            },
        );
        task.forget(&("ns".into(), "A5".into()), &mut state);
        assert_eq!(slot(&state, "A1"), "queued", "A1 was dropped from the schedule");
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
