//! The custom resources of group `hookrelay.dev`, version `v1alpha1`, and the
//! small types they share. Doc comments become the CRD schema descriptions
//! shown by `kubectl explain`.

pub mod delivery;
pub mod hub;
pub mod webhook;

pub use delivery::{Delivery, DeliverySpec, DeliveryStatus};
pub use hub::{Hub, HubSpec, HubStatus};
pub use webhook::{Webhook, WebhookSpec, WebhookStatus};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "hookrelay.dev";
/// The group and version delivery history is served in through the
/// Kubernetes API (`hookrelay api`), beside the Delivery CRD's.
pub const HISTORY_GROUP: &str = "history.hookrelay.dev";
pub const HISTORY_VERSION: &str = "v1alpha1";
/// The field manager under which the controller writes (server-side apply).
pub const FIELD_MANAGER: &str = "hookrelay-controller";

/// Annotation whose every new value regenerates a webhook's signing secret.
pub const ROTATE_SECRET_ANNOTATION: &str = "hookrelay.dev/rotate-secret";
/// Label naming the hub an object belongs to.
pub const HUB_LABEL: &str = "hookrelay.dev/hub";
/// Label naming the webhook an object belongs to.
pub const WEBHOOK_LABEL: &str = "hookrelay.dev/webhook";
/// Label telling what a generated Secret is for (`signing` or `ingest-token`).
pub const SECRET_PURPOSE_LABEL: &str = "hookrelay.dev/secret-purpose";
/// An HTTP header name: an RFC 9110 token.
pub const HEADER_NAME_PATTERN: &str = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";
/// Standard label naming the managing tool.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret, in the namespace of the referring object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// How a failing delivery is retried. Unset fields take the hub's value, then
/// the defaults (18 retries within 12h).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Attempts after the first one before the delivery fails and the webhook
    /// is deactivated. 0 to 50; default 18.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 50))]
    pub max_retries: Option<u32>,
    /// Time from the first attempt within which the last retry falls, as a
    /// duration such as "12h", "30m" or "1h30m". 1s to 168h; default "12h".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('1s') && duration(self) <= duration('168h')",
        "message": "window must be a duration between 1s and 168h, such as \"12h\""
    }]))]
    pub window: Option<Duration>,
}

/// Condition types and reasons used in statuses.
pub mod conditions {
    pub const READY: &str = "Ready";
    pub const ACTIVE: &str = "Active";
    /// kstatus: True while work is under way (InProgress).
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: True when it will not get Ready without a change (Failed).
    pub const STALLED: &str = "Stalled";
}

/// The kstatus conditions that go with a Ready condition: what is missing
/// may still arrive (`waiting`: e.g. a Hub applied in the same sync) is
/// Reconciling; anything else that keeps it from Ready needs a change and
/// is Stalled. Both are False once Ready.
pub fn progress_conditions(
    previous: &[Condition],
    problem: Option<(&str, &str)>,
    waiting: bool,
    observed_generation: Option<i64>,
    now: &jiff::Timestamp,
) -> [Condition; 2] {
    let (reconciling, stalled) = match problem {
        None => (
            condition(
                previous,
                conditions::RECONCILING,
                false,
                "Ready",
                "up to date",
                observed_generation,
                now,
            ),
            condition(
                previous,
                conditions::STALLED,
                false,
                "Ready",
                "up to date",
                observed_generation,
                now,
            ),
        ),
        Some((reason, message)) => (
            condition(
                previous,
                conditions::RECONCILING,
                waiting,
                reason,
                message,
                observed_generation,
                now,
            ),
            condition(
                previous,
                conditions::STALLED,
                !waiting,
                reason,
                message,
                observed_generation,
                now,
            ),
        ),
    };
    [reconciling, stalled]
}

/// Builds a condition; `last_transition_time` is kept from `previous` when
/// the status did not change, so an unchanged condition is written unchanged.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: &jiff::Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(*now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation,
        last_transition_time,
    }
}

/// Schema of a list of conditions, merged by type as Kubernetes expects.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_keeps_transition_time_while_status_is_unchanged() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: jiff::Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let first = condition(&[], "Ready", true, "Ok", "fine", Some(1), &t0);
        let same = condition(std::slice::from_ref(&first), "Ready", true, "Ok", "fine", Some(2), &t1);
        assert_eq!(same.last_transition_time.0, t0);
        let flipped = condition(&[first], "Ready", false, "HubNotFound", "no hub", Some(2), &t1);
        assert_eq!(flipped.last_transition_time.0, t1);
        assert_eq!(flipped.status, "False");
    }
}
