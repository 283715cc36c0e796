//! `Webhook`: a handler URL subscribed to events of one hub.

use super::{RetryPolicy, SecretKeyRef, conditions_schema};
use crate::resources::delivery::Phase;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A webhook: the events it subscribes to and the URL (the handler) that
/// receives a signed HTTP request for each of them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "hookrelay.dev",
    version = "v1alpha1",
    kind = "Webhook",
    doc = "A webhook: a handler URL that gets a signed, retried, recorded HTTP request for each event of its hub it subscribes to. Deactivated by the controller when it keeps failing.",
    plural = "webhooks",
    shortname = "wh",
    category = "hookrelay",
    namespaced,
    status = "WebhookStatus",
    printcolumn = r#"{"name":"Label","type":"string","jsonPath":".spec.label"}"#,
    printcolumn = r#"{"name":"Hub","type":"string","jsonPath":".spec.hub"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Events","type":"string","jsonPath":".spec.events"}"#,
    printcolumn = r#"{"name":"Active","type":"boolean","jsonPath":".spec.active"}"#,
    printcolumn = r#"{"name":"Paused","type":"boolean","jsonPath":".spec.paused"}"#,
    printcolumn = r#"{"name":"Last Status","type":"integer","jsonPath":".status.lastDelivery.statusCode"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.tls) || url(self.url).getScheme() == 'https'",
        "message": "tls needs an https url"
    },
    {
        "rule": "!has(self.oauth2) || !has(self.headers) || !self.headers.exists(h, h.name.lowerAscii() == 'authorization')",
        "message": "oauth2 sets the Authorization header: remove it from headers"
    },
    {
        "rule": "!has(self.secretRef) || !has(self.signing) || !has(self.signing.scheme) || self.signing.scheme == 'symmetric'",
        "message": "signing.scheme asymmetric or both signs with a key hookrelay generates into the webhook's own Secret: remove secretRef, or use symmetric"
    }
]))]
pub struct WebhookSpec {
    /// Name of the Hub, in the same namespace, whose events trigger this webhook.
    #[schemars(length(min = 1, max = 253))]
    pub hub: String,
    /// Human-readable name shown in the webhook list, 1 to 128 characters.
    #[schemars(length(min = 1, max = 128))]
    pub label: String,
    /// The webhook handler: an absolute http or https URL with a host, such
    /// as "https://shop.example.com/hooks/cms".
    #[schemars(length(min = 1, max = 2048), extend("x-kubernetes-validations" = [{
        "rule": "isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",
        "message": "url must be an absolute http or https URL with a host, such as \"https://example.com/hook\""
    }]))]
    pub url: String,
    /// Events that trigger this webhook: built-in names such as
    /// "dynamic-content.content-item.updated", the hub's custom events, or a
    /// wildcard such as "dynamic-content.content-item.*". At least one, no duplicates.
    #[schemars(
        length(min = 1, max = 64),
        extend("x-kubernetes-list-type" = "set"),
        inner(length(min = 1, max = 253), regex(pattern = crate::events::SUBSCRIPTION_PATTERN))
    )]
    pub events: Vec<String>,
    /// Whether events trigger this webhook. Deactivated webhooks are not
    /// triggered; the controller sets this to false when a delivery runs out of
    /// retries. Set it to true to reactivate. Default true.
    #[serde(default = "default_true")]
    pub active: bool,
    /// Hold this webhook's deliveries: events keep triggering it and their
    /// deliveries are stored, but nothing is sent and retries do not
    /// advance until it is set back to false; then the backlog is sent,
    /// oldest first, within the usual limits. Unlike `active: false`, no
    /// event is missed. Default false.
    #[serde(default)]
    pub paused: bool,
    /// HTTP method of the requests: POST (default), PUT, PATCH or DELETE.
    #[serde(default)]
    pub method: HttpMethod,
    /// Extra request headers, such as an API key the handler expects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub headers: Vec<WebhookHeader>,
    /// Conditions on the event, all of which must hold for the webhook to be
    /// triggered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub filters: Vec<WebhookFilter>,
    /// A Handlebars template rendering the JSON request body from the event.
    /// Fields: `id`, `name`, `receivedAt`, `payload.…`. `"{{payload.x}}"`
    /// inserts a value escaped for inside a JSON string (write the quotes);
    /// `{{json payload.x}}` inserts it as JSON (strings quoted, objects
    /// whole). The result must be JSON, or the attempt fails saying so.
    /// Unset: the CMS envelope {"name": …, "payload": …}. At most 16 KiB; no
    /// partials, no inline partials or other decorators, no {{#each}} inside
    /// another; at most 1 MiB of output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16384), extend("x-kubernetes-validations" = [{
        "rule": "!self.contains('{{>') && !self.contains('{{~>') && !self.contains('{{#>') && !self.contains('{{~#>') && !self.contains('{{#*') && !self.contains('{{~#*') && !self.contains('{{*')",
        "message": "customPayload may not use partials ({{> name}}) or decorators and inline partials ({{#*inline}})"
    }]))]
    pub custom_payload: Option<String>,
    /// Bring your own signing secret: the Secret key holding it. When unset a
    /// 128-character secret is generated into a Secret owned by the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Overrides the hub's retry policy for this webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Deliver one at a time, in the order ingest accepted the events, the
    /// deliveries whose key is equal (e.g. per content item). Unset: no
    /// ordering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<Ordering>,
    /// TLS towards the handler: a client certificate to present (mutual
    /// TLS) and the CAs to trust instead of the public roots. Needs an
    /// https url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<WebhookTls>,
    /// Authenticate to the handler with an OAuth 2.0 access token from the
    /// client-credentials grant, sent as `Authorization: Bearer` (recorded
    /// as `<redacted>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2>,
    /// Overrides the hub's delivery settings for this webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<WebhookDelivery>,
    /// Overrides the hub's signing scheme for this webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<WebhookSigning>,
}

/// A webhook's own delivery settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDelivery {
    /// At most this many requests per second to this handler, across every
    /// replica (overrides the hub's `delivery.rateLimit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::resources::hub::DeliveryRateLimit>,
    /// Whether requests carry W3C `traceparent` and `tracestate`
    /// (overrides the hub's `delivery.traceContext`; default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<bool>,
}

/// A webhook's own signing settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSigning {
    /// `symmetric`, `asymmetric` or `both`; unset: the hub's (default symmetric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<crate::resources::hub::SigningScheme>,
}

/// The signing a webhook's requests get, as its receivers verify them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningStatus {
    /// The scheme in effect (the webhook's, else its hub's).
    pub scheme: crate::resources::hub::SigningScheme,
    /// With asymmetric or both: the ed25519 public key that verifies the
    /// `v1a` signatures, as `whpk_<base64>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// During a rotation overlap: the previous key's, which still signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_public_key: Option<String>,
}

/// Label by which a Secret's owner consents to a Webhook using it as a
/// credential (`spec.tls.clientCertSecretRef`, `spec.oauth2.clientSecretRef`).
pub const CREDENTIAL_CONSENT_LABEL: &str = "hookrelay.dev/webhook-credential";

/// TLS settings towards the handler.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookTls {
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) whose certificate
    /// the requests present. Its owner consents with the label
    /// `hookrelay.dev/webhook-credential: "true"`. A renewed certificate is
    /// used from the next attempt on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<SecretRef>,
    /// A Secret key holding PEM CA certificates: the handler's certificate
    /// must chain to one of them. Unset: the public web roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// A Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// OAuth 2.0 client credentials (RFC 6749 section 4.4).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2 {
    /// The token endpoint: an absolute http or https URL. It passes the same
    /// egress checks as the handler.
    #[serde(rename = "tokenURL")]
    #[schemars(length(min = 1, max = 2048), extend("x-kubernetes-validations" = [{
        "rule": "isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",
        "message": "tokenURL must be an absolute http or https URL with a host, such as \"https://login.example.com/oauth2/token\""
    }]))]
    pub token_url: String,
    /// The client identifier.
    #[serde(rename = "clientID")]
    #[schemars(length(min = 1, max = 1024))]
    pub client_id: String,
    /// The Secret key holding the client secret. Its owner consents with the
    /// label `hookrelay.dev/webhook-credential: "true"`.
    pub client_secret_ref: SecretKeyRef,
    /// Scopes requested, sent space-separated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 256), regex(pattern = r"^[!#-\[\]-~]+$"))
    )]
    pub scopes: Vec<String>,
    /// The `audience` parameter some providers require (Auth0, Okta).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub audience: Option<String>,
    /// How the client authenticates to the token endpoint: `basic` (HTTP
    /// Basic, the default) or `body` (client_id and client_secret in the form).
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// How an OAuth 2.0 client presents its secret.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Basic,
    Body,
}

fn default_true() -> bool {
    true
}

/// HTTP method of a webhook's requests.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
}

/// A request header: a literal value, or one read from a Secret (never
/// printed in status or logs).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.value) != has(self.valueFrom)",
    "message": "exactly one of value or valueFrom must be set"
}]))]
pub struct WebhookHeader {
    /// Header name: an HTTP token, not Content-Type, User-Agent, the
    /// signature header or a Standard Webhooks `webhook-*` header.
    #[schemars(length(min = 1, max = 128), regex(pattern = super::HEADER_NAME_PATTERN), extend("x-kubernetes-validations" = [{
        "rule": "!(self.lowerAscii() in ['content-type', 'content-length', 'host', 'user-agent', 'x-amplience-webhook-signature'] || self.lowerAscii().startsWith('webhook-'))",
        "message": "name is reserved: Content-Type, Content-Length, Host, User-Agent, X-Amplience-Webhook-Signature and webhook-* are set by hookrelay"
    }]))]
    pub name: String,
    /// Literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub value: Option<String>,
    /// Value read from a Secret in the webhook's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<HeaderValueSource>,
}

/// Where a header value comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValueSource {
    /// The Secret key holding the value.
    pub secret_key_ref: SecretKeyRef,
}

/// A condition on the event: the value at `path` equals `equal`, or is one
/// of `in`. Exactly one of the two is set. Values are strings; a number,
/// boolean or null at `path` is compared by its JSON text (`42`, `true`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.equal) != has(self.__in__)",
    "message": "exactly one of equal or in must be set"
}]))]
pub struct WebhookFilter {
    /// RFC 9535 JSONPath into the event {"id", "name", "payload"}, such as
    /// "$.payload.contentTypeUri".
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^\$"))]
    pub path: String,
    /// The value the path must select.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub equal: Option<String>,
    /// Values one of which the path must select. 1 to 64 values.
    #[serde(rename = "in", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 1024)))]
    pub in_: Option<Vec<String>>,
}

impl WebhookSpec {
    /// The rate limit in effect: the webhook's, else its hub's, else none.
    pub fn rate_limit(
        &self,
        hub: Option<&crate::resources::HubSpec>,
    ) -> Option<crate::resources::hub::DeliveryRateLimit> {
        self.delivery
            .as_ref()
            .and_then(|d| d.rate_limit)
            .or_else(|| hub.and_then(|h| h.delivery.as_ref()).and_then(|d| d.rate_limit))
    }

    /// Whether requests carry the event's trace context: the webhook's
    /// setting, else its hub's, else yes.
    pub fn trace_context(&self, hub: Option<&crate::resources::HubSpec>) -> bool {
        self.delivery
            .as_ref()
            .and_then(|d| d.trace_context)
            .or_else(|| hub.and_then(|h| h.delivery.as_ref()).and_then(|d| d.trace_context))
            .unwrap_or(true)
    }

    /// The signing scheme in effect: the webhook's, else its hub's, else symmetric.
    pub fn signing_scheme(&self, hub: Option<&crate::resources::HubSpec>) -> crate::resources::hub::SigningScheme {
        self.signing
            .as_ref()
            .and_then(|s| s.scheme)
            .or_else(|| hub.and_then(|h| h.signing.as_ref()).and_then(|s| s.scheme))
            .unwrap_or_default()
    }

    /// An active webhook of `hub` sending `events` to `url` by POST, with
    /// every other setting at its default.
    pub fn new(hub: &str, label: &str, url: &str, events: &[&str]) -> Self {
        Self {
            hub: hub.into(),
            label: label.into(),
            url: url.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            active: true,
            paused: false,
            method: HttpMethod::Post,
            headers: vec![],
            filters: vec![],
            custom_payload: None,
            secret_ref: None,
            retry: None,
            ordering: None,
            delivery: None,
            signing: None,
            tls: None,
            oauth2: None,
        }
    }
}

/// Ordered delivery per key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ordering {
    /// An RFC 9535 JSONPath into the event {id, name, payload}, such as
    /// "$.payload.id". Deliveries with the same first value go one at a
    /// time: a later one waits while an earlier one is Pending or Retrying.
    /// A delivery whose path selects nothing is not ordered.
    #[schemars(length(min = 1, max = 256))]
    pub key: String,
}

/// Observed state of a webhook.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: hub found, events known, signing secret available.
    /// `Active`: whether events trigger the webhook, and why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The Secret key holding the signing secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// The signing scheme in effect and, when asymmetric, the public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningStatus>,
    /// The value of the `hookrelay.dev/rotate-secret` annotation last acted
    /// on, so each new value rotates the secret once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_for: Option<String>,
    /// When the controller deactivated the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivated_at: Option<Time>,
    /// Why the controller deactivated the webhook; cleared on reactivation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivation: Option<Deactivation>,
    /// The newest delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<DeliverySummary>,
    /// The newest 20 deliveries, newest first: the webhook's recent history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub recent_deliveries: Vec<DeliverySummary>,
    /// Deliveries that ended Succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<u64>,
    /// Deliveries that ended Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<u64>,
}

/// Annotation the controller sets, together with `spec.active: false`, in
/// one write when it deactivates a webhook: a JSON `DeactivationRecord`.
/// The reconciler reflects it in status and removes it on reactivation.
pub const DEACTIVATED_ANNOTATION: &str = "hookrelay.dev/deactivated";

/// The content of `DEACTIVATED_ANNOTATION`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeactivationRecord {
    #[serde(flatten)]
    pub deactivation: Deactivation,
    pub at: Time,
}

/// Why the controller deactivated a webhook.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deactivation {
    /// `RetriesExhausted` (a delivery ran out of attempts) or `Gone` (the
    /// handler answered 410 Gone).
    pub reason: String,
    /// What happened, naming the delivery.
    pub message: String,
    /// The delivery that caused it.
    pub delivery: String,
}

/// One line of a webhook's delivery history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySummary {
    /// The delivery id: the Delivery's name and the `webhook-id` header.
    pub id: String,
    /// The event name.
    pub event: String,
    /// When the latest attempt started.
    pub time: MicroTime,
    /// Attempts made so far.
    pub attempts: u32,
    /// HTTP status of the latest response, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Phase of the delivery.
    pub outcome: Phase,
}
