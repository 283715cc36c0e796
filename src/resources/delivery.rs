//! `Delivery`: one event for one webhook — the seed's "delivery ID". Every
//! attempt for it is recorded under the same id in its status.

use super::any_json;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One event to be delivered to one webhook, with every attempt recorded.
/// `kubectl get delivery ID -o yaml` shows the requests and responses.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "hookrelay.dev",
    version = "v1alpha1",
    kind = "Delivery",
    plural = "deliveries",
    shortname = "dlv",
    category = "hookrelay",
    namespaced,
    status = "DeliveryStatus",
    printcolumn = r#"{"name":"Webhook","type":"string","jsonPath":".spec.webhook"}"#,
    printcolumn = r#"{"name":"Event","type":"string","jsonPath":".spec.event.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Attempts","type":"integer","jsonPath":".status.attemptCount"}"#,
    printcolumn = r#"{"name":"Last Status","type":"integer","jsonPath":".status.lastStatusCode"}"#,
    printcolumn = r#"{"name":"Next Attempt","type":"date","priority":1,"jsonPath":".status.nextAttemptAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// Name of the Webhook, in the same namespace, this delivery is for.
    #[schemars(length(min = 1, max = 253))]
    pub webhook: String,
    /// Name of the Hub that emitted the event.
    #[schemars(length(min = 1, max = 253))]
    pub hub: String,
    /// The event being delivered.
    pub event: EventRef,
    /// The event payload as the CMS sent it.
    #[schemars(schema_with = "any_json")]
    pub payload: serde_json::Value,
}

/// Identity of an event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventRef {
    /// The event id: the CMS's, or generated at ingest.
    #[schemars(length(min = 1, max = 256))]
    pub id: String,
    /// The event name, such as "dynamic-content.content-item.updated".
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// When ingest accepted the event.
    pub received_at: MicroTime,
}

/// Annotation whose every new value on a Delivery starts a new round of
/// attempts under the same delivery id.
pub const REDELIVER_ANNOTATION: &str = "hookrelay.dev/redeliver";

/// Where a delivery stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Not attempted yet.
    #[default]
    Pending,
    /// Attempted and failed; another attempt is due at `nextAttemptAt`.
    Retrying,
    /// A 2xx response was received.
    Succeeded,
    /// Out of attempts, or the handler answered 410 Gone.
    Failed,
    /// Stopped before success, e.g. because the webhook was deactivated.
    Cancelled,
}

impl Phase {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Observed state of a delivery.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStatus {
    /// Pending, Retrying, Succeeded, Failed or Cancelled.
    #[serde(default)]
    pub phase: Phase,
    /// Every attempt, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Number of attempts made.
    #[serde(default)]
    pub attempt_count: u32,
    /// HTTP status of the latest response, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<u16>,
    /// When the next attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<MicroTime>,
    /// When the delivery finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<MicroTime>,
    /// Why the delivery is in its phase, for Failed and Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The value of the `hookrelay.dev/redeliver` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivered_for: Option<String>,
    /// The number of the attempt that began the current round: 1, or the
    /// first attempt after a manual redelivery. Retries count from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_start: Option<u32>,
}

/// One HTTP request and its outcome.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// When the request started.
    pub time: MicroTime,
    /// Milliseconds from the start of the request to the end of the response.
    pub duration_ms: u64,
    /// The request as sent, with secret header values redacted.
    pub request: RecordedRequest,
    /// The response, if one was received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<RecordedResponse>,
    /// Why the attempt failed without a response (timeout, connection refused,
    /// denied address...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A request as recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRequest {
    pub method: String,
    pub url: String,
    /// Headers in the order sent; values from Secrets read "<redacted>".
    pub headers: Vec<Header>,
}

/// A response as recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedResponse {
    pub status_code: u16,
    pub headers: Vec<Header>,
    /// The body, as text, cut at the hub's response body limit.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Whether the body was longer than what is recorded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
}

/// An HTTP header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Header {
    pub name: String,
    pub value: String,
}
