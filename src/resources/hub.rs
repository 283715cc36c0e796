//! `Hub`: one CMS hub. Webhooks belong to exactly one hub in their namespace;
//! the hub carries the ingest credentials and the defaults for its webhooks.

use super::{RetryPolicy, SecretKeyRef, conditions_schema};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A CMS hub: the source of events and the defaults for its webhooks.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "hookrelay.dev",
    version = "v1alpha1",
    kind = "Hub",
    doc = "A CMS hub: where one CMS posts its events (its ingest URL and bearer token), and the defaults (retries, timeouts, retention, signing, egress) for the webhooks that belong to it.",
    plural = "hubs",
    shortname = "hrhub",
    category = "hookrelay",
    namespaced,
    status = "HubStatus",
    printcolumn = r#"{"name":"Label","type":"string","jsonPath":".spec.label"}"#,
    printcolumn = r#"{"name":"Webhooks","type":"integer","jsonPath":".status.webhooks"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct HubSpec {
    /// Human-readable name of the hub, 1 to 128 characters.
    #[schemars(length(min = 1, max = 128))]
    pub label: String,
    /// How the CMS authenticates to the ingest endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestSettings>,
    /// Event names this hub emits beyond the built-in catalogue, such as
    /// "shop.order.paid": lowercase dot-separated segments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "set"), inner(length(min = 1, max = 253), regex(pattern = crate::events::EVENT_NAME_PATTERN)))]
    pub custom_events: Vec<String>,
    /// Default retry policy of this hub's webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// How requests are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySettings>,
    /// How long finished Deliveries are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionPolicy>,
    /// How requests are signed and secrets rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningSettings>,
    /// Which destination networks deliveries may not reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressPolicy>,
}

/// Ingest authentication.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestSettings {
    /// Bring your own bearer token: the Secret key holding it. When unset a
    /// 128-character token is generated into a Secret owned by the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// How many events ingest accepts for this hub (per ingest replica);
    /// beyond it senders get 429 with Retry-After and nothing is stored.
    /// Default: 50 per second, bursts of 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// How senders may prove they are the CMS; any one scheme admits a
    /// request. Unset: the bearer token only. Lets the CMS's own webhooks
    /// (signed with X-Amplience-Webhook-Signature) or any Standard Webhooks
    /// sender post here without a bearer header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub verify: Vec<VerifyScheme>,
}

/// One accepted way to authenticate an ingest request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.scheme == 'bearer' || has(self.secretRef)",
    "message": "secretRef is required for the amplience and standardWebhooks schemes"
}]))]
pub struct VerifyScheme {
    /// bearer (the hub's token, or secretRef's), amplience (HMAC-SHA256 of
    /// the body in X-Amplience-Webhook-Signature) or standardWebhooks
    /// (webhook-id, webhook-timestamp, webhook-signature).
    pub scheme: Scheme,
    /// The shared secret (or, for bearer, the token). For standardWebhooks
    /// a "whsec_" prefix is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// standardWebhooks: how far webhook-timestamp may be from now, such as
    /// "5m" (default). 1s to 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('1s') && duration(self) <= duration('1h')",
        "message": "tolerance must be a duration between 1s and 1h, such as \"5m\""
    }]))]
    pub tolerance: Option<Duration>,
}

/// An ingest authentication scheme.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Scheme {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The CMS's `X-Amplience-Webhook-Signature`.
    Amplience,
    /// Standard Webhooks signatures.
    StandardWebhooks,
}

/// A token bucket: `eventsPerSecond` on average, `burst` at once.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Events accepted per second on average. 1 to 10000; default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub events_per_second: Option<u32>,
    /// Events accepted at once after a quiet period. 1 to 100000; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub burst: Option<u32>,
}

/// Request settings for deliveries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySettings {
    /// Time allowed for one request, from connect to the end of the response
    /// body, such as "10s". 1s to 5m; default "15s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('1s') && duration(self) <= duration('5m')",
        "message": "timeout must be a duration between 1s and 5m, such as \"15s\""
    }]))]
    pub timeout: Option<Duration>,
    /// Time allowed to establish a connection. 100ms to 1m; default "5s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('100ms') && duration(self) <= duration('1m')",
        "message": "connectTimeout must be a duration between 100ms and 1m, such as \"5s\""
    }]))]
    pub connect_timeout: Option<Duration>,
    /// Requests in flight at once to one webhook. 1 to 100; default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub concurrency_per_webhook: Option<u32>,
    /// Bytes of each response body recorded in a Delivery's status.
    /// 0 to 65536; default 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65536))]
    pub response_body_limit: Option<u32>,
    /// At most this many requests per second to each webhook of this hub
    /// (a webhook's own `delivery.rateLimit` overrides it), across every
    /// replica. Deliveries waiting for their turn are not failed attempts.
    /// Unset: no limit but the concurrency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<DeliveryRateLimit>,
    /// Whether each request carries W3C `traceparent` (a child of the
    /// event's trace) and `tracestate`, so handlers' tracing joins the
    /// CMS's; default true. A webhook's own setting overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<bool>,
}

/// A request rate: `requestsPerSecond` on average, up to `burst` at once
/// after a quiet spell.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRateLimit {
    /// Requests per second, 0.01 to 10000 (0.5: one every two seconds).
    #[schemars(range(min = 0.01, max = 10000.0))]
    pub requests_per_second: f64,
    /// Requests that may go at once after a quiet spell, 1 to 1000; default 1
    /// (evenly spaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub burst: Option<u32>,
}

/// Retention of finished (Succeeded, Failed, Cancelled) Deliveries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    /// Finished Deliveries kept per webhook, newest first. 0 to 10000; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub keep_per_webhook: Option<u32>,
    /// Finished Deliveries older than this are deleted, such as "168h".
    /// 1m to 8760h; default "168h" (7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('1m') && duration(self) <= duration('8760h')",
        "message": "maxAge must be a duration between 1m and 8760h, such as \"168h\""
    }]))]
    pub max_age: Option<Duration>,
}

/// Signing settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningSettings {
    /// Name of the header carrying the body signature; default
    /// "X-Amplience-Webhook-Signature", which the CMS SDK verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = super::HEADER_NAME_PATTERN))]
    pub header: Option<String>,
    /// How long a rotated secret's previous value still signs requests, so
    /// receivers can switch without dropping any. 0s to 720h; default "24h".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('0s') && duration(self) <= duration('720h')",
        "message": "rotationOverlap must be a duration between 0s and 720h, such as \"24h\""
    }]))]
    pub rotation_overlap: Option<Duration>,
    /// How the Standard Webhooks `webhook-signature` header signs, for this
    /// hub's webhooks that do not say: `symmetric` (default; `v1`,
    /// HMAC-SHA256 with the shared secret), `asymmetric` (`v1a`, ed25519:
    /// receivers verify with the public key in the Webhook's status and
    /// hold no secret), or `both` (during a migration). The body signature
    /// header stays HMAC with the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<SigningScheme>,
}

/// How the `webhook-signature` header signs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SigningScheme {
    /// `v1,…`: HMAC-SHA256 with the webhook's secret.
    #[default]
    Symmetric,
    /// `v1a,…`: ed25519 with the webhook's private key.
    Asymmetric,
    /// Both, each with its own key.
    Both,
}

impl SigningScheme {
    /// As the field spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningScheme::Symmetric => "symmetric",
            SigningScheme::Asymmetric => "asymmetric",
            SigningScheme::Both => "both",
        }
    }

    /// Whether it signs with the webhook's ed25519 key.
    pub fn asymmetric(self) -> bool {
        self != SigningScheme::Symmetric
    }

    /// Whether it signs with the webhook's shared secret (`v1`).
    pub fn symmetric(self) -> bool {
        self != SigningScheme::Asymmetric
    }
}

/// Destination networks, in CIDR notation, that this hub's deliveries may
/// not connect to, on top of the operator's floor (link-local, cloud
/// metadata, 0.0.0.0/8, ::, multicast, broadcast, and whatever the operator
/// adds), which no hub can lift.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicy {
    /// Networks denied in addition to the operator's floor, such as "10.0.0.0/8".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)), extend("x-kubernetes-validations" = [{
        "rule": "self.all(n, isCIDR(n))",
        "message": "deniedNetworks entries must be CIDRs such as \"10.0.0.0/8\" or \"fd00::/8\""
    }]))]
    pub denied_networks: Vec<String>,
    /// Exceptions carved out of `deniedNetworks`, such as "10.1.0.0/16" when
    /// "10.0.0.0/8" is denied. They never lift the operator's floor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)), extend("x-kubernetes-validations" = [{
        "rule": "self.all(n, isCIDR(n))",
        "message": "allowedNetworks entries must be CIDRs such as \"169.254.0.0/16\""
    }]))]
    pub allowed_networks: Vec<String>,
}

/// Observed state of a hub.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the ingest token is available.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The Secret key holding the bearer token the CMS sends to ingest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_token_secret_ref: Option<SecretKeyRef>,
    /// Webhooks that belong to this hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<u32>,
    /// Of those, the active ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_webhooks: Option<u32>,
    /// The operator's egress proxy (`host:port`) this hub's requests to
    /// handlers go through; absent: they go directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<String>,
}

/// How long a rotated-out secret keeps signing when the hub does not say.
pub const DEFAULT_ROTATION_OVERLAP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Effective settings of a hub, with defaults applied.
impl HubSpec {
    pub fn rotation_overlap(&self) -> std::time::Duration {
        self.signing
            .as_ref()
            .and_then(|s| s.rotation_overlap)
            .map(Into::into)
            .unwrap_or(DEFAULT_ROTATION_OVERLAP)
    }
}
