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
pub mod retry;
pub mod signing;
pub mod summary;

use crate::metrics::Metrics;
use crate::resources::delivery::{Delivery, Phase};
use crate::resources::{Hub, Webhook};
use crate::secret_cache::SecretCache;
use futures::StreamExt;
use jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::time::{DelayQueue, delay_queue};

/// Requests in flight to one webhook unless its hub says otherwise.
pub const DEFAULT_CONCURRENCY_PER_WEBHOOK: u32 = 4;
/// Wait before re-making an attempt whose result could not be recorded.
const RECORD_RETRY: Duration = Duration::from_secs(5);

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
}

/// Where a tracked delivery is.
enum Slot {
    Queued {
        timer: delay_queue::Key,
        delivery: Arc<Delivery>,
    },
    /// An attempt is running; `latest` is the newest object seen meanwhile.
    InFlight { latest: Option<Arc<Delivery>> },
}

/// When `delivery` should next be attempted, or `None` if it is finished.
pub fn due_at(delivery: &Delivery) -> Option<Timestamp> {
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
        global_concurrency: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            summaries: summary::Summaries::new(client.clone(), webhooks.clone()),
            client,
            webhooks,
            hubs,
            secrets,
            http: http::Clients::default(),
            metrics,
            global: Arc::new(Semaphore::new(global_concurrency.max(1))),
            per_webhook: Mutex::default(),
        })
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
                        watcher::Event::Init => relisting = Some(HashSet::new()),
                        watcher::Event::InitApply(d) => {
                            if let Some(seen) = relisting.as_mut() {
                                seen.insert(key_of(&d));
                            }
                            self.consider(Arc::new(d), &mut tracked, &mut queue);
                        }
                        watcher::Event::InitDone => {
                            if let Some(seen) = relisting.take() {
                                let gone: Vec<Key> = tracked.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                                for key in gone {
                                    untrack(&key, &mut tracked, &mut queue);
                                }
                            }
                        }
                        watcher::Event::Apply(d) => self.consider(Arc::new(d), &mut tracked, &mut queue),
                        watcher::Event::Delete(d) => untrack(&key_of(&d), &mut tracked, &mut queue),
                    }
                }
                Some(expired) = queue.next(), if !queue.is_empty() => {
                    let key = expired.into_inner();
                    if let Some(Slot::Queued { delivery, .. }) = tracked.remove(&key) {
                        tracked.insert(key.clone(), Slot::InFlight { latest: None });
                        self.clone().spawn_attempt(key, delivery, done_tx.clone());
                    }
                }
                Some((key, result, sent)) = done_rx.recv() => {
                    let latest = match tracked.remove(&key) {
                        Some(Slot::InFlight { latest }) => latest,
                        _ => None,
                    };
                    match result {
                        Ok(attempt::Done::Recorded(stored)) => {
                            // The stored object is newer than anything the
                            // watch delivered during the attempt.
                            self.consider(Arc::new(*stored), &mut tracked, &mut queue);
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
            self.metrics.pending.set(tracked.len() as i64);
        }
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
            let result = attempt::run(&self, &delivery).await;
            let _ = done.send((key, result, delivery));
        });
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn delivery(status: Option<DeliveryStatus>) -> Delivery {
        let mut d = Delivery::new(
            "d",
            DeliverySpec {
                webhook: "w".into(),
                hub: "h".into(),
                event: EventRef {
                    id: "e".into(),
                    name: "n".into(),
                    received_at: Time(Timestamp::now()),
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
            next_attempt_at: Some(Time(at)),
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
