//! `Delivery`: one event for one webhook — the seed's "delivery ID". Every
//! attempt for it is recorded under the same id in its status.

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
    doc = "One event for one webhook (the CMS's delivery ID, also the webhook-id header): the payload, and every attempt's request and response in its status.",
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
    printcolumn = r#"{"name":"Waiting For","type":"string","jsonPath":".status.waitingFor"}"#,
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
    /// The event payload as JSON text, as ingest accepted it. Stored as text,
    /// not as nested YAML, so no Delivery can nest deeper than a client
    /// decodes (one such object would break every list of Deliveries), and
    /// the API server does not walk it on every write.
    #[schemars(length(max = 1048576))]
    pub payload: String,
}

/// The size a Delivery may reach, as stored, unless the operator sets
/// another (`--delivery-budget`, 16 KiB to 1 MiB; etcd refuses objects
/// above about 1.5 MiB).
pub const DEFAULT_BUDGET: usize = 256 * 1024;
pub const MIN_BUDGET: usize = 16 * 1024;
pub const MAX_BUDGET: usize = 1024 * 1024;

/// The largest payload a Delivery under `budget` may carry: half of it, so
/// the other half is left for its attempts.
pub fn max_payload(budget: usize) -> usize {
    budget / 2
}

/// The deepest nesting of arrays and objects accepted in an event payload.
pub const MAX_PAYLOAD_DEPTH: usize = 32;

/// Why a Delivery's payload cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InvalidPayload {
    #[error("spec.payload is not a JSON document: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("spec.payload nests arrays and objects {0} levels deep; at most {MAX_PAYLOAD_DEPTH} are allowed")]
    TooDeep(usize),
}

impl Delivery {
    /// The event as templates and ordering keys see it.
    pub fn event_document(&self) -> Result<serde_json::Value, InvalidPayload> {
        Ok(serde_json::json!({
            "id": self.spec.event.id,
            "name": self.spec.event.name,
            "payload": self.spec.payload_value()?,
            "receivedAt": self.spec.event.received_at,
        }))
    }

    /// The redelivery request on this delivery not yet acted on, if any.
    pub fn redelivery_request(&self) -> Option<&str> {
        let requested = kube::ResourceExt::annotations(self).get(REDELIVER_ANNOTATION)?;
        let handled = self.status.as_ref().and_then(|s| s.redelivered_for.as_deref());
        (handled != Some(requested.as_str())).then_some(requested.as_str())
    }
}

impl DeliverySpec {
    /// The payload as a JSON value (for templates and filters), checked to
    /// be one JSON document within the depth limit, whoever stored it.
    pub fn payload_value(&self) -> Result<serde_json::Value, InvalidPayload> {
        let value: serde_json::Value = serde_json::from_str(&self.payload)?;
        match json_depth(&value) {
            depth if depth > MAX_PAYLOAD_DEPTH => Err(InvalidPayload::TooDeep(depth)),
            _ => Ok(value),
        }
    }

    /// The payload text as stored, after the same checks.
    pub fn payload_raw(&self) -> Result<Box<serde_json::value::RawValue>, InvalidPayload> {
        self.payload_value()?;
        Ok(serde_json::value::RawValue::from_string(self.payload.clone())?)
    }
}

/// How deep `value` nests arrays and objects (a scalar is 0).
pub fn json_depth(value: &serde_json::Value) -> usize {
    // Iterative, so a deep value cannot exhaust the stack here either.
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match v {
            serde_json::Value::Array(a) => Box::new(a.iter()),
            serde_json::Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    deepest
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
    /// The event's W3C trace context: the CMS's trace (a new one when it
    /// sent none), with ingest's span as the parent of every attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// W3C Trace Context of an event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TraceContext {
    /// `traceparent` of ingest's span for the event: version, trace id,
    /// span id, flags, such as "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".
    #[schemars(regex(pattern = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"))]
    pub traceparent: String,
    /// The vendors' `tracestate` the CMS sent, passed on as it came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The 32 hex digits naming the trace.
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }
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
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.roundStart) || self.roundStart <= (has(self.attemptCount) ? self.attemptCount : 0) + 1",
    "message": "roundStart must be at most attemptCount + 1 (the attempt that began the current round)"
}]))]
pub struct DeliveryStatus {
    /// Pending, Retrying, Succeeded, Failed or Cancelled.
    #[serde(default)]
    pub phase: Phase,
    /// Every attempt, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Number of attempts made.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100000))]
    pub attempt_count: u32,
    /// HTTP status of the latest response, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 999))]
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
    /// Attempts left out of `attempts` to keep the Delivery within its size
    /// budget (the first and the newest are always kept); `attemptCount`
    /// stays the true total.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0, max = 100000))]
    pub attempts_omitted: u32,
    /// The body as sent, when the webhook renders a custom payload (the
    /// default envelope is `{"name", "payload"}` of the spec, byte for byte,
    /// and is not stored twice). Cut to an eighth of the size budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    /// Whether `requestBody` was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub request_body_truncated: bool,
    /// The earlier delivery with the same ordering key this one waits for
    /// (the webhook's `spec.ordering`); cleared when it is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The value of the `hookrelay.dev/redeliver` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivered_for: Option<String>,
    /// The number of the attempt that began the current round: 1, or the
    /// first attempt after a manual redelivery. Retries count from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100001))]
    pub round_start: Option<u32>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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
    /// Milliseconds this attempt waited for its turn at the webhook's
    /// `delivery.rateLimit` before it was sent (absent: it did not wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_wait_ms: Option<u64>,
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
    /// The HTTP method: POST, PUT, PATCH or DELETE.
    pub method: String,
    /// The handler's URL, credentials in it read "<redacted>".
    pub url: String,
    /// Headers in the order sent; values from Secrets read "<redacted>".
    pub headers: Vec<Header>,
}

/// A response as recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedResponse {
    /// The HTTP status code the handler answered.
    pub status_code: u16,
    /// Response headers, at most 32 and 4 KiB; credentials and cookies
    /// (Set-Cookie, WWW-Authenticate, ...) read "<redacted>".
    pub headers: Vec<Header>,
    /// Whether headers were left out or cut to stay within those bounds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub headers_truncated: bool,
    /// The body, as text, cut so that as stored (escaped) it is within the
    /// hub's response body limit.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Whether the body was longer than what is recorded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
}

/// An HTTP header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Header {
    /// The header's name, as sent or received.
    pub name: String,
    /// Its value, "<redacted>" for secrets and credentials.
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_counts_nested_arrays_and_objects() {
        assert_eq!(json_depth(&json!(1)), 0);
        assert_eq!(json_depth(&json!({})), 1);
        assert_eq!(json_depth(&json!({"a": [1, {"b": []}]})), 4);
        let mut deep = json!(0);
        for _ in 0..10_000 {
            deep = serde_json::Value::Array(vec![deep]);
        }
        assert_eq!(json_depth(&deep), 10_000);
        // Dropping a deep value recurses in serde_json; forget it instead.
        std::mem::forget(deep);
    }

    #[test]
    fn payload_text_must_be_one_json_document() {
        let spec = |payload: &str| DeliverySpec {
            webhook: "w".into(),
            hub: "h".into(),
            event: EventRef {
                id: "e".into(),
                name: "n".into(),
                received_at: MicroTime(jiff::Timestamp::UNIX_EPOCH),
                trace: None,
            },
            payload: payload.into(),
        };
        assert_eq!(spec(r#"{"id":"c-1"}"#).payload_value().unwrap(), json!({"id": "c-1"}));
        assert_eq!(spec(r#" {"id": 1} "#).payload_raw().unwrap().get(), r#"{"id": 1}"#);
        let err = spec("{not json").payload_value().unwrap_err().to_string();
        assert!(err.starts_with("spec.payload is not a JSON document"), "{err}");
        assert!(spec(&"[".repeat(200)).payload_value().is_err());
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(spec(&deep(MAX_PAYLOAD_DEPTH)).payload_raw().is_ok());
        assert!(matches!(
            spec(&deep(MAX_PAYLOAD_DEPTH + 1)).payload_raw(),
            Err(InvalidPayload::TooDeep(33))
        ));
        assert!(matches!(
            spec(&deep(300)).payload_raw(),
            Err(InvalidPayload::NotJson(_))
        ));
    }
}
