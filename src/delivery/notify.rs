//! Failure notifications people act on: when a webhook is deactivated or a
//! delivery finally fails, an operational event (`hookrelay.*`) goes into
//! the same hub, to every webhook subscribed to it, signed, retried and
//! recorded like any other. A webhook is never told about itself, and the
//! failure of a notification is not notified (no loops).

use super::Engine;
use crate::events::{DELIVERY_FAILED, WEBHOOK_DEACTIVATED, is_operational};
use crate::fanout;
use crate::resources::delivery::Delivery;
use crate::resources::webhook::Deactivation;
use crate::store::NewDelivery;
use jiff::Timestamp;
use kube::ResourceExt;
use serde_json::{Value, json};

/// One operational event: its deterministic id (a repeat is idempotent),
/// name and payload.
#[derive(Debug, PartialEq)]
pub struct Notice {
    pub id: String,
    pub name: &'static str,
    pub payload: Value,
    /// The webhook it is about (never told about itself).
    pub about: String,
}

/// The notice for a delivery that finally failed, unless it was itself a
/// notification.
pub fn delivery_failed(delivery: &Delivery, now: Timestamp) -> Option<Notice> {
    if is_operational(&delivery.spec.event.name) {
        return None;
    }
    let status = delivery.status.clone().unwrap_or_default();
    Some(Notice {
        id: format!("{DELIVERY_FAILED}:{}:{}", delivery.name_any(), status.attempt_count),
        name: DELIVERY_FAILED,
        payload: json!({
            "webhook": delivery.spec.webhook, "delivery": delivery.name_any(),
            "event": { "id": delivery.spec.event.id, "name": delivery.spec.event.name },
            "reason": status.message, "lastStatus": status.last_status_code,
            "attempts": status.attempt_count, "time": now.to_string(),
        }),
        about: delivery.spec.webhook.clone(),
    })
}

/// The notice for a deactivated webhook.
pub fn webhook_deactivated(
    webhook: &str,
    generation: Option<i64>,
    why: &Deactivation,
    last_status: Option<u16>,
    now: Timestamp,
) -> Notice {
    Notice {
        id: format!("{WEBHOOK_DEACTIVATED}:{webhook}:{}", generation.unwrap_or(0)),
        name: WEBHOOK_DEACTIVATED,
        payload: json!({
            "webhook": webhook, "delivery": why.delivery, "reason": why.reason,
            "message": why.message, "lastStatus": last_status, "time": now.to_string(),
        }),
        about: webhook.to_string(),
    }
}

impl Engine {
    /// Stores a delivery of `notice` for each webhook of `hub` in `ns`
    /// subscribed to it (filters apply), except the one it is about, in the
    /// store deliveries live in (and so delivered like any other).
    pub(crate) async fn notify(&self, ns: &str, hub: &str, notice: Notice) {
        let document = fanout::document(&notice.id, notice.name, &notice.payload);
        let webhooks = self.webhooks.state();
        let (selected, _) = fanout::select(webhooks.iter(), ns, hub, notice.name, &document);
        let payload = notice.payload.to_string();
        // One at a time: each is stored (or not) on its own, as before a
        // notice had several receivers.
        for webhook in selected.into_iter().filter(|w| w.name_any() != notice.about) {
            let delivery = NewDelivery {
                delivery: fanout::build(webhook, &notice.id, notice.name, &payload, Timestamp::now()),
                ordering_key: fanout::ordering_key(webhook, &document),
            };
            match self
                .deliveries
                .insert(ns, Box::new(std::iter::once(delivery)), false)
                .await
            {
                Ok(()) => {
                    tracing::info!(namespace = ns, webhook = %webhook.name_any(), event = notice.name, "operational event stored")
                }
                Err(e) => {
                    tracing::warn!(namespace = ns, webhook = %webhook.name_any(), event = notice.name, error = %e, "could not store an operational event")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::delivery::{DeliverySpec, DeliveryStatus, EventRef, Phase};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn failed(event: &str) -> Delivery {
        let mut d = Delivery::new(
            "shop-1",
            DeliverySpec {
                webhook: "shop".into(),
                hub: "main".into(),
                event: EventRef {
                    id: "e1".into(),
                    name: event.into(),
                    received_at: MicroTime(Timestamp::UNIX_EPOCH),
                    trace: None,
                },
                payload: "{}".into(),
            },
        );
        d.status = Some(DeliveryStatus {
            phase: Phase::Failed,
            attempt_count: 19,
            last_status_code: Some(500),
            ..Default::default()
        });
        d
    }

    #[test]
    fn a_final_failure_is_noticed_once_and_notices_never_cascade() {
        let now = Timestamp::UNIX_EPOCH;
        let notice = delivery_failed(&failed("dynamic-content.snapshot.published"), now).unwrap();
        assert_eq!(notice.name, DELIVERY_FAILED);
        assert_eq!(
            notice.id, "hookrelay.delivery.failed:shop-1:19",
            "deterministic: a repeat is idempotent"
        );
        assert_eq!(notice.payload["lastStatus"], 500);
        assert_eq!(notice.about, "shop");
        assert_eq!(
            delivery_failed(&failed(DELIVERY_FAILED), now),
            None,
            "a failed notification is not notified"
        );
    }
}
