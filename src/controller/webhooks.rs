//! The Webhook reconciler: signing secret (generate, refill, rotate, expire
//! the previous value), `Ready` and `Active` conditions.

use super::generated_secret::{self, Change, Desired, State};
use super::{Context, Error};
use crate::delivery::auth;
use crate::events::unknown_subscriptions;
use crate::resources::hub::SigningScheme;
use crate::resources::webhook::{
    CREDENTIAL_CONSENT_LABEL, DEACTIVATED_ANNOTATION, DeactivationRecord, SigningStatus, WebhookSpec,
};
use crate::resources::{
    FIELD_MANAGER, HUB_LABEL, Hub, MANAGED_BY_LABEL, ROTATE_SECRET_ANNOTATION, SECRET_PURPOSE_LABEL, SecretKeyRef,
    WEBHOOK_LABEL, Webhook, WebhookStatus, condition, conditions,
};
use crate::secret_cache::SecretCache;
use crate::secrets;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Periodic resync of a healthy webhook, a safety net for missed events.
const RESYNC: Duration = Duration::from_secs(3600);

/// The webhooks of a hub, for re-reconciling them when the hub changes.
pub fn of_hub(store: &Store<Webhook>, hub: &Hub) -> Vec<ObjectRef<Webhook>> {
    let ns = hub.namespace();
    store
        .state()
        .iter()
        .filter(|w| w.namespace() == ns && w.spec.hub == hub.name_any())
        .map(|w| ObjectRef::from_obj(w.as_ref()))
        .collect()
}

/// The webhooks that own or read a Secret, for re-reconciling them when it changes.
pub fn using_secret(store: &Store<Webhook>, secret: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<Webhook>> {
    super::users_of_secret(store, secret, |webhook, name| {
        webhook.spec.secret_ref.as_ref().is_some_and(|r| r.name == name)
            || webhook
                .spec
                .headers
                .iter()
                .any(|h| h.value_from.as_ref().is_some_and(|v| v.secret_key_ref.name == name))
            || webhook.spec.tls.as_ref().is_some_and(|t| {
                t.client_cert_secret_ref.as_ref().is_some_and(|r| r.name == name)
                    || t.ca_secret_ref.as_ref().is_some_and(|r| r.name == name)
            })
            || webhook
                .spec
                .oauth2
                .as_ref()
                .is_some_and(|o| o.client_secret_ref.name == name)
    })
}

/// Name of the Secret generated for a webhook without `secretRef`.
pub fn signing_secret_name(webhook: &str) -> String {
    secrets::child_name(webhook, "signing-secret")
}

/// Where the signing secret stands.
struct Signing {
    secret_ref: Option<SecretKeyRef>,
    /// Why it is unusable: (reason, message naming the Secret).
    problem: Option<(&'static str, String)>,
    rotated_for: Option<String>,
    change: Change,
    recheck_at: Option<Timestamp>,
    /// The scheme in effect and its public keys.
    status: Option<SigningStatus>,
}

pub async fn reconcile(webhook: Arc<Webhook>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = webhook.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let name = webhook.name_any();
    let now = Timestamp::now();
    let hub = ctx.hubs.get(&ObjectRef::new(&webhook.spec.hub).within(&ns));
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);

    let mut signing = signing_secret(&webhook, hub.as_deref(), &secrets_api, &ctx.secrets, &ns, now).await?;
    if signing.problem.is_none() {
        signing.problem = header_secrets_problem(&webhook.spec, &ctx.secrets, &ns).await?;
    }
    if signing.problem.is_none()
        && let Err(message) = auth::resolve(&ctx.secrets, &ns, &webhook.name_any(), &webhook.spec).await?
    {
        signing.problem = Some(("CredentialNotUsable", message));
    }
    let status = desired_status(&webhook, hub.as_deref(), &signing, &now);

    publish_events(&webhook, &signing, &status, &ctx).await;
    if webhook.spec.active && webhook.annotations().contains_key(DEACTIVATED_ANNOTATION) {
        // Reactivated by the user: the record of why the controller
        // deactivated it no longer applies.
        let api: Api<Webhook> = Api::namespaced(ctx.client.clone(), &ns);
        let clear = serde_json::json!({ "metadata": { "annotations": { DEACTIVATED_ANNOTATION: null } } });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        api.patch(&name, &params, &Patch::Merge(clear)).await?;
    }
    if !status_is_current(webhook.status.as_ref(), &status) {
        crate::kubernetes::apply_status::<Webhook>(&ctx.client, &ns, &name, FIELD_MANAGER, &status).await?;
    }
    ctx.backoff.succeeded(&super::backoff_key(webhook.as_ref()));

    // Changes to the webhook, its hub and its Secrets trigger reconciles; the
    // timed ones are the end of a rotation overlap and a safety-net resync.
    let next = match signing.recheck_at {
        Some(at) => Duration::try_from(at.duration_since(now))
            .unwrap_or_default()
            .max(Duration::from_secs(1)),
        None => RESYNC,
    };
    Ok(Action::requeue(next))
}

async fn signing_secret(
    webhook: &Webhook,
    hub: Option<&Hub>,
    api: &Api<Secret>,
    cache: &SecretCache,
    ns: &str,
    now: Timestamp,
) -> Result<Signing, Error> {
    let previous = webhook.status.as_ref();
    let scheme = webhook.spec.signing_scheme(hub.map(|h| &h.spec));
    if let Some(user_ref) = &webhook.spec.secret_ref {
        // A user's Secret is read, never written, and used only with its
        // owner's consent: signing a body the author chooses with it would
        // hand out HMACs under any Secret of the namespace.
        let secret = cache.get(ns, &user_ref.name).await?;
        let problem = secrets::consented_value(
            secret.as_deref(),
            CREDENTIAL_CONSENT_LABEL,
            &user_ref.name,
            &user_ref.key,
        )
        .err()
        .map(|message| ("SecretNotUsable", format!("spec.secretRef: {message}")));
        // Possible only through the hub's default (the Webhook's own
        // setting is refused at apply): a user's Secret holds no key.
        let problem = problem.or_else(|| {
            scheme.asymmetric().then(|| {
                (
                    "SchemeNeedsGeneratedSecret",
                    format!(
                        "the hub's signing.scheme {} signs with a key hookrelay generates into the webhook's own Secret: remove spec.secretRef, or set spec.signing.scheme: symmetric",
                        scheme.as_str()
                    ),
                )
            })
        });
        return Ok(Signing {
            secret_ref: Some(user_ref.clone()),
            problem,
            rotated_for: previous.and_then(|s| s.rotated_for.clone()),
            change: Change::None,
            recheck_at: None,
            status: Some(SigningStatus {
                scheme,
                ..SigningStatus::default()
            }),
        });
    }
    let name = webhook.name_any();
    let desired = Desired {
        namespace: ns,
        name: signing_secret_name(&name),
        key: secrets::CURRENT_KEY,
        owner: webhook.controller_owner_ref(&()).ok_or(Error::MissingMetadata("uid"))?,
        labels: BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), "hookrelay".to_string()),
            (WEBHOOK_LABEL.to_string(), name.clone()),
            (HUB_LABEL.to_string(), webhook.spec.hub.clone()),
            (SECRET_PURPOSE_LABEL.to_string(), "signing".to_string()),
        ]),
        rotate_for: webhook.annotations().get(ROTATE_SECRET_ANNOTATION).map(String::as_str),
        overlap: hub
            .map(|h| h.spec.rotation_overlap())
            .unwrap_or(crate::resources::hub::DEFAULT_ROTATION_OVERLAP),
        private_key: scheme.asymmetric(),
    };
    let secret_ref = SecretKeyRef {
        name: desired.name.clone(),
        key: desired.key.to_string(),
    };
    Ok(match generated_secret::ensure(api, cache, &desired, now).await? {
        State::Ready {
            change,
            rotated_for,
            recheck_at,
        } => Signing {
            status: Some(signing_status(
                scheme,
                cache.get(ns, &secret_ref.name).await?.as_deref(),
                now,
            )),
            secret_ref: Some(secret_ref),
            problem: None,
            rotated_for,
            change,
            recheck_at,
        },
        State::NotOwned => Signing {
            secret_ref: None,
            problem: Some((
                "SecretConflict",
                format!(
                    "Secret {} exists and is not owned by this webhook; delete it or set spec.secretRef",
                    desired.name
                ),
            )),
            rotated_for: None,
            change: Change::None,
            recheck_at: None,
            status: None,
        },
    })
}

/// The scheme and the public keys of the generated Secret's private keys
/// (the previous one while the overlap lasts). A key just generated shows
/// once the Secret's watch has it (its change reconciles again).
fn signing_status(scheme: SigningScheme, secret: Option<&Secret>, now: Timestamp) -> SigningStatus {
    let public = |key: &str| {
        secret
            .and_then(|s| secrets::value(s, key))
            .and_then(|k| crate::delivery::signing::public_key(k).ok())
    };
    let overlap = secret
        .and_then(secrets::previous_expires_at)
        .is_some_and(|until| until > now);
    SigningStatus {
        scheme,
        public_key: scheme.asymmetric().then(|| public(secrets::PRIVATE_KEY)).flatten(),
        previous_public_key: (scheme.asymmetric() && overlap)
            .then(|| public(secrets::PREVIOUS_PRIVATE_KEY))
            .flatten(),
    }
}

/// Why a header's Secret cannot be used (missing, not consented, no key),
/// without telling which of the first two.
async fn header_secrets_problem(
    spec: &WebhookSpec,
    cache: &SecretCache,
    ns: &str,
) -> Result<Option<(&'static str, String)>, Error> {
    for header in &spec.headers {
        let Some(from) = &header.value_from else { continue };
        let r = &from.secret_key_ref;
        let secret = cache.get(ns, &r.name).await?;
        if let Err(message) = secrets::header_value(secret.as_deref(), &header.name, &r.name, &r.key) {
            return Ok(Some(("HeaderSecretNotUsable", message)));
        }
    }
    Ok(None)
}

/// Why the webhook cannot deliver, if it cannot: (reason, message).
fn not_ready_reason(spec: &WebhookSpec, hub: Option<&Hub>, signing: &Signing) -> Option<(&'static str, String)> {
    let Some(hub) = hub else {
        return Some(("HubNotFound", format!("Hub {} not found in this namespace", spec.hub)));
    };
    let unknown = unknown_subscriptions(&spec.events, &hub.spec.custom_events);
    if !unknown.is_empty() {
        return Some((
            "UnknownEvent",
            format!(
                "events neither built in nor in Hub {}'s customEvents: {}",
                spec.hub,
                unknown.join(", ")
            ),
        ));
    }
    if let Err(e) = crate::filters::check(&spec.filters) {
        return Some(("InvalidFilter", e.to_string()));
    }
    if let Some(Err(e)) = spec.ordering.as_ref().map(|o| crate::filters::check_path(&o.key)) {
        return Some(("InvalidOrdering", format!("spec.ordering.key: {e}")));
    }
    if let Some(Err(e)) = spec.custom_payload.as_deref().map(crate::template::check) {
        return Some(("InvalidTemplate", e.to_string()));
    }
    signing.problem.clone()
}

/// The part of the status this reconciler owns.
fn desired_status(webhook: &Webhook, hub: Option<&Hub>, signing: &Signing, now: &Timestamp) -> WebhookStatus {
    let previous = webhook
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = webhook.metadata.generation;
    let ready = match not_ready_reason(&webhook.spec, hub, signing) {
        None => condition(
            previous,
            conditions::READY,
            true,
            "Ready",
            "signing secret available and events known",
            generation,
            now,
        ),
        Some((reason, message)) => condition(previous, conditions::READY, false, reason, message, generation, now),
    };
    // The controller's own deactivation, recorded with the switch itself.
    let record = (!webhook.spec.active)
        .then(|| webhook.annotations().get(DEACTIVATED_ANNOTATION))
        .flatten()
        .and_then(|json| serde_json::from_str::<DeactivationRecord>(json).ok());
    let (ok, reason, message) = match (&record, webhook.spec.active) {
        (_, true) => (true, "Active", "events trigger this webhook".to_string()),
        (Some(r), false) => (false, r.deactivation.reason.as_str(), r.deactivation.message.clone()),
        (None, false) => (
            false,
            "Deactivated",
            "spec.active is false: events do not trigger this webhook".to_string(),
        ),
    };
    let active = condition(previous, conditions::ACTIVE, ok, reason, message, generation, now);
    let problem = not_ready_reason(&webhook.spec, hub, signing);
    // A missing Hub may be on its way (applied in the same sync).
    let waiting = problem.as_ref().is_some_and(|(reason, _)| *reason == "HubNotFound");
    let [reconciling, stalled] = crate::resources::progress_conditions(
        previous,
        problem.as_ref().map(|(r, m)| (*r, m.as_str())),
        waiting,
        generation,
        now,
    );
    WebhookStatus {
        observed_generation: generation,
        conditions: vec![ready, active, reconciling, stalled],
        secret_ref: signing.secret_ref.clone(),
        signing: signing.status.clone(),
        rotated_for: signing.rotated_for.clone(),
        deactivated_at: record.as_ref().map(|r| r.at.clone()),
        deactivation: record.map(|r| r.deactivation),
        ..WebhookStatus::default()
    }
}

/// Whether the fields this reconciler owns already read `desired`, so an
/// unchanged webhook costs no write.
fn status_is_current(current: Option<&WebhookStatus>, desired: &WebhookStatus) -> bool {
    current.is_some_and(|c| {
        c.observed_generation == desired.observed_generation
            && c.conditions == desired.conditions
            && c.secret_ref == desired.secret_ref
            && c.signing == desired.signing
            && c.rotated_for == desired.rotated_for
            && c.deactivated_at == desired.deactivated_at
            && c.deactivation == desired.deactivation
    })
}

async fn publish_events(webhook: &Webhook, signing: &Signing, status: &WebhookStatus, ctx: &Context) {
    let secret = signing.secret_ref.as_ref().map(|r| r.name.as_str()).unwrap_or_default();
    let mut events = Vec::new();
    let normal = |reason: &str, note: String| (EventType::Normal, reason.to_string(), note);
    match signing.change {
        Change::Created => events.push(normal("SecretGenerated", format!("Generated a signing secret in Secret {secret}"))),
        Change::Refilled => events.push(normal("SecretGenerated", format!("Secret {secret} had no value; generated a new signing secret"))),
        Change::KeyGenerated => events.push(normal(
            "SigningKeyGenerated",
            format!("Generated an ed25519 signing key in Secret {secret}; its public key is in status.signing.publicKey"),
        )),
        Change::Rotated => events.push(normal(
            "SecretRotated",
            format!("Rotated the signing secret in Secret {secret}; the previous value also signs until the hub's rotation overlap ends"),
        )),
        Change::PreviousExpired => events.push(normal("RotationOverlapEnded", format!("The previous signing secret in Secret {secret} expired"))),
        Change::None => {}
    }
    let was = |type_: &str| {
        webhook
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
            .map(|c| c.reason.clone())
    };
    for c in &status.conditions {
        let changed = was(&c.type_).as_deref() != Some(c.reason.as_str());
        match (c.type_.as_str(), c.status.as_str()) {
            (conditions::READY, "False") if changed => {
                events.push((EventType::Warning, c.reason.clone(), c.message.clone()))
            }
            // The controller's own deactivations publish their Warning
            // where they happen; here only the user's switches.
            (conditions::ACTIVE, "True") if changed && was(&c.type_).is_some() => events.push(normal(
                "Reactivated",
                "spec.active is true: events trigger this webhook again".into(),
            )),
            (conditions::ACTIVE, "False") if changed && c.reason == "Deactivated" => events.push(normal(
                "Deactivated",
                "spec.active is false: events do not trigger this webhook".into(),
            )),
            _ => {}
        }
    }
    let reference = webhook.object_ref(&());
    for (type_, reason, note) in events {
        let event = Event {
            type_,
            reason,
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::HubSpec;

    fn webhook(events: &[&str], active: bool) -> Webhook {
        let mut w = Webhook::new(
            "shop",
            WebhookSpec {
                active,
                ..WebhookSpec::new("main", "Shop", "https://shop.example.com/hook", events)
            },
        );
        w.metadata.generation = Some(3);
        w
    }

    fn hub(custom: &[&str]) -> Hub {
        Hub::new(
            "main",
            HubSpec {
                label: "Main".into(),
                ingest: None,
                custom_events: custom.iter().map(|e| e.to_string()).collect(),
                retry: None,
                delivery: None,
                retention: None,
                signing: None,
                egress: None,
            },
        )
    }

    fn ok_signing() -> Signing {
        Signing {
            secret_ref: Some(SecretKeyRef {
                name: "shop-signing-secret".into(),
                key: "secret".into(),
            }),
            problem: None,
            rotated_for: None,
            change: Change::None,
            recheck_at: None,
            status: None,
        }
    }

    fn ready(status: &WebhookStatus) -> (&str, &str) {
        let c = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn ready_when_hub_exists_events_known_and_secret_usable() {
        let now = Timestamp::now();
        let s = desired_status(
            &webhook(&["dynamic-content.content-item.*"], true),
            Some(&hub(&[])),
            &ok_signing(),
            &now,
        );
        assert_eq!(ready(&s), ("True", "Ready"));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.secret_ref.as_ref().unwrap().name, "shop-signing-secret");
    }

    #[test]
    fn not_ready_reasons_name_the_problem() {
        let now = Timestamp::now();
        let w = webhook(&["shop.order.paid"], true);
        let s = desired_status(&w, None, &ok_signing(), &now);
        assert_eq!(ready(&s), ("False", "HubNotFound"));
        let s = desired_status(&w, Some(&hub(&[])), &ok_signing(), &now);
        assert_eq!(ready(&s), ("False", "UnknownEvent"));
        assert!(s.conditions[0].message.contains("shop.order.paid"));
        let missing = Signing {
            problem: Some(("SecretNotFound", "Secret mine not found".into())),
            ..ok_signing()
        };
        let s = desired_status(&w, Some(&hub(&["shop.order.paid"])), &missing, &now);
        assert_eq!(ready(&s), ("False", "SecretNotFound"));
    }

    #[test]
    fn broken_templates_and_filter_paths_make_the_webhook_not_ready() {
        let now = Timestamp::now();
        let mut w = webhook(&["dynamic-content.edition.published"], true);
        w.spec.custom_payload = Some("{{#if name}}unclosed".into());
        let s = desired_status(&w, Some(&hub(&[])), &ok_signing(), &now);
        assert_eq!(ready(&s), ("False", "InvalidTemplate"));
        w.spec.custom_payload = None;
        w.spec.filters = vec![crate::resources::webhook::WebhookFilter {
            path: "$.payload[".into(),
            equal: Some("x".into()),
            in_: None,
        }];
        let s = desired_status(&w, Some(&hub(&[])), &ok_signing(), &now);
        assert_eq!(ready(&s), ("False", "InvalidFilter"));
        assert!(s.conditions[0].message.contains("$.payload["));
    }

    #[test]
    fn inactive_webhook_has_active_false() {
        let now = Timestamp::now();
        let s = desired_status(
            &webhook(&["dynamic-content.edition.published"], false),
            Some(&hub(&[])),
            &ok_signing(),
            &now,
        );
        let active = s.conditions.iter().find(|c| c.type_ == "Active").unwrap();
        assert_eq!(
            (active.status.as_str(), active.reason.as_str()),
            ("False", "Deactivated")
        );
    }

    #[test]
    fn an_applied_status_is_current_on_the_next_pass() {
        let now = Timestamp::now();
        let mut w = webhook(&["dynamic-content.edition.published"], true);
        let first = desired_status(&w, Some(&hub(&[])), &ok_signing(), &now);
        assert!(!status_is_current(w.status.as_ref(), &first));
        w.status = Some(first);
        let later = Timestamp::now() + jiff::SignedDuration::from_secs(60);
        let second = desired_status(&w, Some(&hub(&[])), &ok_signing(), &later);
        assert!(status_is_current(w.status.as_ref(), &second));
    }
}
