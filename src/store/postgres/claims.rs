//! The Postgres store's schedule: every replica claims due deliveries (as
//! many as it has room for, within each webhook's limit counted across
//! replicas) and hands them to its engine. Nothing is held in memory between
//! attempts: a Retrying delivery waits in the database until it is due and
//! whichever replica claims it then sends it. A replica's claims hold while
//! its heartbeat does; a crashed replica's are taken over once it runs out.

use super::{ClaimLimits, Postgres};
use crate::metrics::Metrics;
use crate::resources::{Hub, Webhook};
use crate::store::retention;
use crate::store::{DEFER, Due, Limits, Loaded, Queue, Scope, Settled, StoreError};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Every how many housekeeping rounds waiting deliveries are checked for
/// one whose turn came unnoticed.
const SAFETY_NET_EVERY: u64 = 12;
/// How often claims look for due deliveries when nothing woke them
/// (ingest's notifications wake them for new ones; this catches retries).
const POLL: Duration = Duration::from_millis(250);

/// The claims of one engine (one claimant).
pub struct Claims {
    db: Arc<Postgres>,
    /// Claimed from these namespaces only (all, when empty).
    namespaces: Vec<String>,
    webhooks: Store<Webhook>,
    hubs: Store<Hub>,
    metrics: Arc<Metrics>,
    /// Woken when ingest commits deliveries.
    committed: Arc<Notify>,
    /// Woken when one of this engine's attempts ends: a slot of its
    /// webhook is free again (a claim that found every webhook at its limit
    /// need not wait for the next poll).
    settled: Notify,
    /// This engine's share of the pending gauge (every replica reports the
    /// store's count, so alerts take the max, not the sum).
    reported_pending: AtomicI64,
}

impl Claims {
    pub fn new(db: Arc<Postgres>, scope: Scope) -> Claims {
        Claims {
            committed: db.listen(),
            settled: Notify::new(),
            db,
            namespaces: scope.namespace.into_iter().collect(),
            webhooks: scope.webhooks,
            hubs: scope.hubs,
            metrics: scope.metrics,
            reported_pending: AtomicI64::new(0),
        }
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

impl Drop for Claims {
    fn drop(&mut self) {
        self.metrics
            .pending
            .dec_by(self.reported_pending.load(Ordering::Relaxed));
    }
}

#[async_trait::async_trait]
impl Queue for Claims {
    fn claims(&self) -> bool {
        true
    }

    async fn heartbeat(&self, claimant: &str, ttl: Duration) -> Result<(), StoreError> {
        self.db.heartbeat(claimant, ttl).await.map_err(StoreError::Database)
    }

    /// Claims up to `room` due deliveries; when none is due (or every
    /// webhook with due ones is at its limit or paused), waits for ingest's
    /// next commit, the end of one of this engine's attempts, or a short
    /// poll (for retries coming due), and answers none: the engine asks
    /// again with its limits as they are then (a webhook resumed meanwhile).
    async fn next(
        &self,
        claimant: &str,
        room: usize,
        lease: Duration,
        limits: &Limits,
    ) -> Result<Vec<Due>, StoreError> {
        if room == 0 {
            std::future::pending::<()>().await;
        }
        let webhooks: Vec<(String, String, i32)> = limits
            .webhooks
            .iter()
            .map(|(ns, w, limit)| (ns.clone(), w.clone(), *limit as i32))
            .collect();
        let limits = ClaimLimits {
            webhooks: &webhooks,
            default: limits.default as i32,
            per_namespace: limits.per_namespace,
        };
        let claimed = self
            .db
            .claim(claimant, room, lease, &self.namespaces, &limits)
            .await
            .map_err(StoreError::Database)?;
        if claimed.is_empty() {
            tokio::select! {
                _ = self.committed.notified() => {}
                _ = self.settled.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        Ok(claimed
            .into_iter()
            .map(|c| Due {
                namespace: c.delivery.namespace().unwrap_or_default(),
                name: c.delivery.name_any(),
                webhook: c.delivery.spec.webhook.clone(),
                version: c.delivery.resource_version(),
                delivery: Some(Arc::new(c.delivery)),
                early: false,
                claimed_until: Some(c.until),
            })
            .collect())
    }

    async fn load(&self, due: &Due) -> Result<Loaded, StoreError> {
        match self.db.read(&due.namespace, &due.name).await {
            Ok(Some(d)) => Ok(Loaded::Due(d)),
            Ok(None) => Ok(Loaded::Gone),
            Err(e) => Err(StoreError::Database(e)),
        }
    }

    /// A claim not attempted is given back (due again no sooner than
    /// `DEFER` when deferred; in its place when its webhook was paused,
    /// which claims then pass over); a record ended the claim already, and
    /// an unrecorded attempt's claim simply runs out (then it is sent
    /// again, same id).
    async fn settle(&self, due: &Due, claimant: &str, settled: Settled) {
        let after = match settled {
            Settled::NotSent => Some(Some(Duration::ZERO)),
            Settled::Deferred => Some(Some(DEFER)),
            Settled::Later(after) => Some(Some(after)),
            Settled::Paused => Some(None),
            _ => None,
        };
        if let Some(after) = after
            && let Err(e) = self.db.release(&due.namespace, &due.name, claimant, after).await
        {
            // The claim then simply runs out.
            tracing::debug!(delivery = %due.name, error = %e, "could not give a claim back");
        }
        self.settled.notify_one();
    }

    async fn hasten(&self, namespace: &str, webhook: &str) {
        if let Err(e) = self.db.hasten(namespace, webhook).await {
            tracing::warn!(webhook, error = %e, "could not bring a deactivated webhook's deliveries forward; they are cancelled when due");
        }
    }

    async fn housekeeping(&self, round: u64) {
        if round.is_multiple_of(SAFETY_NET_EVERY) {
            if let Err(e) = self.db.forget_claimants().await {
                tracing::debug!(error = %e, "could not forget claimants gone for an hour");
            }
            if let Err(e) = self.db.forget_turns().await {
                tracing::debug!(error = %e, "could not forget rate-limit turns an hour old");
            }
        }
        if round % SAFETY_NET_EVERY == SAFETY_NET_EVERY - 1 {
            match self.db.queue_firsts(&self.namespaces).await {
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
        if let Err(e) = self.db.analyze_if_stale().await {
            tracing::debug!(error = %e, "could not refresh the deliveries table's statistics");
        }
        let (policies, default) = self.retention_policies();
        if let Err(e) = self.db.sweep(&self.namespaces, &policies, default).await {
            tracing::warn!(error = %e, "retention: could not delete expired deliveries");
        }
        if let Ok(pending) = self.db.pending(&self.namespaces).await {
            let before = self.reported_pending.swap(pending, Ordering::Relaxed);
            self.metrics.pending.inc_by(pending - before);
        }
    }
}
