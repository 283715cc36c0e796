//! Deactivation: a webhook whose delivery ran out of retries, or whose
//! handler answered 410 Gone, is switched off (`spec.active: false`, the
//! reason in its status and a Warning Event), its other unfinished
//! deliveries are cancelled, and webhooks subscribed to `hookrelay.*` are
//! told. The same in every store.

use super::{Engine, notify};
use crate::resources::Webhook;
use crate::resources::delivery::{Delivery, Phase};
use crate::resources::webhook::{DEACTIVATED_ANNOTATION, Deactivation, DeactivationRecord};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use std::time::Duration;

impl Engine {
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
    pub(crate) async fn deactivate(&self, ns: &str, webhook: &str, deactivation: Deactivation) {
        let key = (ns.to_string(), webhook.to_string());
        self.mark_deactivated(ns, webhook, &deactivation);
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
        self.metrics
            .deactivations
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: deactivation.reason.clone(),
            })
            .inc();
        if let Some(w) = self.webhooks.get(&ObjectRef::new(webhook).within(ns)) {
            let last_status = w
                .status
                .as_ref()
                .and_then(|s| s.last_delivery.as_ref())
                .and_then(|d| d.status_code);
            let notice = notify::webhook_deactivated(webhook, generation, &deactivation, last_status, Timestamp::now());
            self.notify(ns, &w.spec.hub, notice).await;
        }
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

    /// Treats `webhook` as inactive from now on in this engine, before its
    /// deactivation is written, so no attempt slips out in between.
    pub(crate) fn mark_deactivated(&self, ns: &str, webhook: &str, deactivation: &Deactivation) {
        let why = format!(
            "the webhook was deactivated ({}): {}",
            deactivation.reason, deactivation.message
        );
        self.deactivated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ns.to_string(), webhook.to_string()), (None, why));
    }

    /// What follows a recorded attempt, whatever the store: the failure
    /// notice of a delivery that failed for good, and the deactivation its
    /// outcome calls for. (The store's engine loop brings the webhook's
    /// other deliveries forward, to be cancelled.)
    pub(crate) async fn after_record(&self, stored: &Delivery, deactivation: Option<Deactivation>) {
        let ns = stored.namespace().unwrap_or_default();
        if stored.status.as_ref().is_some_and(|s| s.phase == Phase::Failed)
            && let Some(notice) = notify::delivery_failed(stored, Timestamp::now())
        {
            self.notify(&ns, &stored.spec.hub, notice).await;
        }
        if let Some(deactivation) = deactivation {
            self.deactivate(&ns, &stored.spec.webhook, deactivation).await;
        }
    }
}
