//! The in-memory store: deliveries in a map, for tests of everything above
//! the seam (the engine included) without a cluster or a database. Not
//! durable: a restart loses every delivery. Its versions play the part of a
//! resourceVersion, so a record is as conditional as in the durable stores.
//! One engine delivers (nothing is claimed). Ordering keys are kept as in
//! the other stores: a delivery waits while an earlier one of its key is
//! unfinished.

use super::{
    DEFER, Deliveries, Due, Fanout, Limits, Loaded, NewDelivery, Queue, Records, Settled, StoreError, Written, due_at,
};
use crate::resources::delivery::{Delivery, DeliveryStatus, Phase, REDELIVER_ANNOTATION};
use futures::StreamExt;
use futures::stream::BoxStream;
use jiff::Timestamp;
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::sync::broadcast;

/// How often the engine is asked again while a paused webhook's deliveries
/// are due (it resumes them by asking with the webhook unpaused).
const PAUSED_POLL: Duration = Duration::from_secs(1);

/// Every delivery, by (namespace, name), with the order they were stored in.
#[derive(Default)]
struct Rows {
    rows: BTreeMap<(String, String), Row>,
    stored: u64,
}

struct Row {
    delivery: Delivery,
    version: u64,
    /// Accept order.
    seq: u64,
    /// Handed to the engine and not settled yet.
    handed_out: bool,
    /// Deferred: not due before this.
    not_before: Option<Timestamp>,
    /// Brought forward: due now, and handed out as `early`.
    hastened: bool,
    /// The value of its webhook's ordering key in this event, if it orders.
    ordering_key: Option<String>,
}

impl Row {
    /// The delivery with its version, as a reader sees it.
    fn read(&self) -> Delivery {
        let mut d = self.delivery.clone();
        d.metadata.resource_version = Some(self.version.to_string());
        d
    }
}

/// The store. Changes are announced as (namespace, webhook, name).
pub struct Memory {
    rows: Mutex<Rows>,
    changed: broadcast::Sender<(String, String, String)>,
    /// Woken on every change, for the engine's schedule.
    wake: Notify,
    /// Records to refuse as if the store did not answer (tests of the
    /// engine's record retries).
    failing: std::sync::atomic::AtomicU32,
}

impl Default for Memory {
    fn default() -> Self {
        Self {
            rows: Mutex::default(),
            changed: broadcast::channel(1024).0,
            wake: Notify::new(),
            failing: Default::default(),
        }
    }
}

impl Memory {
    fn rows(&self) -> std::sync::MutexGuard<'_, Rows> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn announce(&self, delivery: &Delivery) {
        self.wake.notify_one();
        let _ = self.changed.send((
            delivery.namespace().unwrap_or_default(),
            delivery.spec.webhook.clone(),
            delivery.name_any(),
        ));
    }

    /// Makes the next `n` records fail as if the store did not answer.
    pub fn fail_records(&self, n: u32) {
        self.failing.store(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What says whether anyone recorded progress on a delivery: an attempt, a
/// phase change or a new round.
fn progress(status: Option<&DeliveryStatus>) -> (u32, Phase, Option<String>, Option<u32>) {
    let s = status.cloned().unwrap_or_default();
    (s.attempt_count, s.phase, s.redelivered_for, s.round_start)
}

#[async_trait::async_trait]
impl Deliveries for Memory {
    async fn insert<'a>(
        &'a self,
        namespace: &'a str,
        deliveries: Fanout<'a>,
        _generated_id: bool,
    ) -> Result<(), StoreError> {
        let new: Vec<NewDelivery> = deliveries.collect();
        if let Some(d) = new
            .iter()
            .map(|n| &n.delivery)
            .find(|d| d.namespace().as_deref() != Some(namespace))
        {
            return Err(StoreError::Invalid(format!(
                "delivery {} is not in namespace {namespace}",
                d.name_any()
            )));
        }
        let mut rows = self.rows();
        for NewDelivery { delivery, ordering_key } in new {
            let key = (namespace.to_string(), delivery.name_any());
            if rows.rows.contains_key(&key) {
                // A repeated event: stored already.
                continue;
            }
            rows.stored += 1;
            let seq = rows.stored;
            self.announce(&delivery);
            rows.rows.insert(
                key,
                Row {
                    delivery,
                    version: 1,
                    seq,
                    handed_out: false,
                    not_before: None,
                    hastened: false,
                    ordering_key,
                },
            );
        }
        Ok(())
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Delivery>, StoreError> {
        Ok(self
            .rows()
            .rows
            .get(&(namespace.to_string(), name.to_string()))
            .map(Row::read))
    }

    async fn list(
        &self,
        namespace: Option<&str>,
        webhook: Option<&str>,
        phases: &[Phase],
        most: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let rows = self.rows();
        let mut found: Vec<&Row> = rows
            .rows
            .values()
            .filter(|r| namespace.is_none_or(|ns| r.delivery.namespace().as_deref() == Some(ns)))
            .filter(|r| webhook.is_none_or(|w| r.delivery.spec.webhook == w))
            .collect();
        // Newest first, at most `most` of each webhook.
        found.sort_by_key(|r| std::cmp::Reverse(r.seq));
        let mut per_webhook: BTreeMap<(Option<String>, &str), usize> = BTreeMap::new();
        Ok(found
            .into_iter()
            .filter(|r| {
                phases.is_empty() || phases.contains(&r.delivery.status.as_ref().map(|s| s.phase).unwrap_or_default())
            })
            .filter(|r| {
                let n = per_webhook
                    .entry((r.delivery.namespace(), r.delivery.spec.webhook.as_str()))
                    .or_default();
                *n += 1;
                *n <= most
            })
            .map(Row::read)
            .collect())
    }

    async fn redeliver(&self, namespace: &str, name: &str, request: &str) -> Result<(), StoreError> {
        let mut rows = self.rows();
        let Some(row) = rows.rows.get_mut(&(namespace.to_string(), name.to_string())) else {
            return Err(StoreError::NotFound(format!("no delivery {name} in {namespace}")));
        };
        row.delivery
            .annotations_mut()
            .insert(REDELIVER_ANNOTATION.into(), request.into());
        row.version += 1;
        row.not_before = None;
        self.announce(&row.delivery);
        Ok(())
    }

    async fn changes(&self, namespace: &str, webhook: &str) -> Result<BoxStream<'static, String>, StoreError> {
        let (namespace, webhook) = (namespace.to_string(), webhook.to_string());
        let changed = announcements(self.changed.subscribe());
        Ok(changed
            .filter_map(move |(ns, w, name)| {
                let mine = ns == namespace && w == webhook;
                async move { mine.then_some(name) }
            })
            .boxed())
    }
}

/// The announcements a receiver gets, as a stream (lagging ones skipped:
/// a change stream says "look again", not what changed).
fn announcements(
    receiver: broadcast::Receiver<(String, String, String)>,
) -> BoxStream<'static, (String, String, String)> {
    futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(change) => return Some((change, receiver)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

#[async_trait::async_trait]
impl Records for Memory {
    /// Stored if the version is the one the engine read; if it changed
    /// without progress (a redelivery request is progress only once acted
    /// on) the record still stands, as in the Kubernetes store.
    async fn record(
        &self,
        delivery: &Delivery,
        status: &DeliveryStatus,
        _claimant: &str,
    ) -> Result<Written, StoreError> {
        let seen: Option<u64> = delivery
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok());
        let Some(seen) = seen else {
            return Err(StoreError::Invalid("the delivery was not read from the store".into()));
        };
        let failing = self.failing.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| n.checked_sub(1),
        );
        if failing.is_ok() {
            return Err(StoreError::Database("no answer (injected)".into()));
        }
        let mut rows = self.rows();
        let key = (delivery.namespace().unwrap_or_default(), delivery.name_any());
        let Some(row) = rows.rows.get_mut(&key) else {
            return Ok(Written::Gone);
        };
        if row.version != seen && progress(row.delivery.status.as_ref()) != progress(delivery.status.as_ref()) {
            return Ok(Written::Superseded(row.read()));
        }
        row.delivery.status = Some(status.clone());
        row.version += 1;
        self.announce(&row.delivery);
        Ok(Written::Stored(row.read()))
    }
}

impl Row {
    /// When the engine may have it: never while handed out or finished.
    fn due(&self) -> Option<Timestamp> {
        if self.handed_out {
            return None;
        }
        let due = due_at(&self.delivery)?;
        if self.hastened {
            return Some(Timestamp::UNIX_EPOCH);
        }
        Some(self.not_before.map_or(due, |t| t.max(due)))
    }
}

#[async_trait::async_trait]
impl Queue for Memory {
    fn reads_limits(&self) -> bool {
        true
    }

    /// Everything due but a paused webhook's, handed out whole; waits for
    /// the next change or the next due time (while a paused webhook's
    /// deliveries are due, at most `PAUSED_POLL`, then answers none, so the
    /// engine asks again with its webhooks as they are then).
    async fn next(
        &self,
        _claimant: &str,
        _room: usize,
        _lease: Duration,
        limits: &Limits,
    ) -> Result<Vec<Due>, StoreError> {
        let paused = limits.paused();
        loop {
            let woken = self.wake.notified();
            let now = Timestamp::now();
            let mut next_due: Option<Timestamp> = None;
            let mut held_back = false;
            let batch: Vec<Due> = {
                let mut rows = self.rows();
                // The first unfinished delivery of each ordering key, in accept order.
                let mut firsts: HashMap<(String, String, String), u64> = HashMap::new();
                for row in rows.rows.values() {
                    if let Some(key) = &row.ordering_key
                        && due_at(&row.delivery).is_some()
                    {
                        let group = (
                            row.delivery.namespace().unwrap_or_default(),
                            row.delivery.spec.webhook.clone(),
                            key.clone(),
                        );
                        let first = firsts.entry(group).or_insert(row.seq);
                        *first = (*first).min(row.seq);
                    }
                }
                let mut batch = vec![];
                for row in rows.rows.values_mut() {
                    let waits = row.ordering_key.as_ref().is_some_and(|key| {
                        let group = (
                            row.delivery.namespace().unwrap_or_default(),
                            row.delivery.spec.webhook.clone(),
                            key.clone(),
                        );
                        firsts.get(&group).is_some_and(|first| *first < row.seq)
                    });
                    if waits {
                        continue;
                    }
                    let namespace = row.delivery.metadata.namespace.as_deref().unwrap_or_default();
                    if paused.contains(&(namespace, row.delivery.spec.webhook.as_str())) {
                        held_back |= row.due().is_some_and(|at| at <= now);
                        continue;
                    }
                    match row.due() {
                        Some(at) if at <= now => {
                            row.handed_out = true;
                            batch.push(Due {
                                namespace: row.delivery.namespace().unwrap_or_default(),
                                name: row.delivery.name_any(),
                                webhook: row.delivery.spec.webhook.clone(),
                                delivery: Some(Arc::new(row.read())),
                                version: Some(row.version.to_string()),
                                early: std::mem::take(&mut row.hastened),
                                claimed_until: None,
                            });
                        }
                        Some(at) => next_due = Some(next_due.map_or(at, |n: Timestamp| n.min(at))),
                        None => {}
                    }
                }
                batch
            };
            if !batch.is_empty() {
                return Ok(batch);
            }
            if held_back {
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep(PAUSED_POLL) => {}
                }
                return Ok(vec![]);
            }
            // Looked at again at least hourly (a delivery held back for good
            // is due at the end of time).
            let wait = next_due
                .and_then(|at| Duration::try_from(at.duration_since(now)).ok())
                .unwrap_or(Duration::MAX)
                .min(Duration::from_secs(3600));
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn load(&self, due: &Due) -> Result<Loaded, StoreError> {
        Ok(match self.get(&due.namespace, &due.name).await? {
            Some(d) => Loaded::Due(d),
            None => Loaded::Gone,
        })
    }

    async fn settle(&self, due: &Due, _claimant: &str, settled: Settled) {
        let mut rows = self.rows();
        let Some(row) = rows.rows.get_mut(&(due.namespace.clone(), due.name.clone())) else {
            return;
        };
        row.handed_out = false;
        row.not_before = match settled {
            Settled::Deferred => Some(Timestamp::now() + DEFER),
            Settled::Later(after) => Some(Timestamp::now() + after),
            // In its place; held back while its webhook is paused.
            Settled::Paused => None,
            // Not again until it changes (here: until redelivered).
            Settled::Unrecorded(_) => Some(Timestamp::MAX),
            _ => None,
        };
        self.wake.notify_one();
    }

    async fn hasten(&self, namespace: &str, webhook: &str) {
        let mut rows = self.rows();
        for row in rows.rows.values_mut() {
            if row.delivery.namespace().as_deref() == Some(namespace)
                && row.delivery.spec.webhook == webhook
                && !row.handed_out
                && due_at(&row.delivery).is_some()
            {
                row.hastened = true;
            }
        }
        self.wake.notify_one();
    }

    async fn housekeeping(&self, _round: u64) {}
}
