//! The Hub reconciler: ingest token (generated unless brought), `Ready`
//! condition and webhook counts.

use super::generated_secret::{self, Change, Desired, State};
use super::{Context, Error};
use crate::resources::{
    FIELD_MANAGER, HUB_LABEL, Hub, HubStatus, MANAGED_BY_LABEL, SECRET_PURPOSE_LABEL, SecretKeyRef, Webhook, condition,
    conditions,
};
use crate::secrets;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The hubs that own or read a Secret, for re-reconciling them when it changes.
pub fn using_secret(store: &Store<Hub>, secret: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<Hub>> {
    super::users_of_secret(store, secret, |hub, name| {
        hub.spec
            .ingest
            .as_ref()
            .and_then(|i| i.token_secret_ref.as_ref())
            .is_some_and(|r| r.name == name)
    })
}

/// Name of the Secret generated for a hub's ingest token.
pub fn token_secret_name(hub: &str) -> String {
    secrets::child_name(hub, "ingest-token")
}

pub async fn reconcile(hub: Arc<Hub>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = hub.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let name = hub.name_any();
    let now = Timestamp::now();
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);

    let (token_ref, problem, change) = match hub.spec.ingest.as_ref().and_then(|i| i.token_secret_ref.as_ref()) {
        Some(user_ref) => {
            let problem = generated_secret::check_user_secret(&ctx.secrets, &ns, &user_ref.name, &user_ref.key)
                .await?
                .err();
            (Some(user_ref.clone()), problem, Change::None)
        }
        None => {
            let desired = Desired {
                namespace: &ns,
                name: token_secret_name(&name),
                key: secrets::TOKEN_KEY,
                owner: hub.controller_owner_ref(&()).ok_or(Error::MissingMetadata("uid"))?,
                labels: BTreeMap::from([
                    (MANAGED_BY_LABEL.to_string(), "hookrelay".to_string()),
                    (HUB_LABEL.to_string(), name.clone()),
                    (SECRET_PURPOSE_LABEL.to_string(), "ingest-token".to_string()),
                ]),
                rotate_for: None,
                overlap: Duration::ZERO,
                private_key: false,
            };
            let token_ref = SecretKeyRef {
                name: desired.name.clone(),
                key: desired.key.to_string(),
            };
            match generated_secret::ensure(&secrets_api, &ctx.secrets, &desired, now).await? {
                State::Ready { change, .. } => (Some(token_ref), None, change),
                State::NotOwned => (
                    None,
                    Some((
                        "SecretConflict",
                        format!(
                            "Secret {} exists and is not owned by this hub; delete it or set spec.ingest.tokenSecretRef",
                            desired.name
                        ),
                    )),
                    Change::None,
                ),
            }
        }
    };

    let (total, active) = webhook_counts(ctx.webhooks.state().iter().map(|w| w.as_ref()), &ns, &name);
    let previous = hub.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = hub.metadata.generation;
    let ready = match &problem {
        None => condition(
            previous,
            conditions::READY,
            true,
            "Ready",
            "ingest token available",
            generation,
            &now,
        ),
        Some((reason, message)) => condition(
            previous,
            conditions::READY,
            false,
            reason,
            message.clone(),
            generation,
            &now,
        ),
    };
    let [reconciling, stalled] = crate::resources::progress_conditions(
        previous,
        problem.as_ref().map(|(r, m)| (*r, m.as_str())),
        false,
        generation,
        &now,
    );
    let status = HubStatus {
        observed_generation: generation,
        conditions: vec![ready, reconciling, stalled],
        ingest_token_secret_ref: token_ref.clone(),
        webhooks: Some(total),
        active_webhooks: Some(active),
        egress_proxy: ctx.egress_proxy.clone(),
    };

    if matches!(change, Change::Created | Change::Refilled) {
        let secret = token_ref.as_ref().map(|r| r.name.as_str()).unwrap_or_default();
        publish(
            &hub,
            &ctx,
            EventType::Normal,
            "IngestTokenGenerated",
            format!("Generated the ingest token in Secret {secret}"),
        )
        .await;
    }
    if let Some((reason, message)) = &problem {
        let was = previous
            .iter()
            .find(|c| c.type_ == conditions::READY)
            .map(|c| c.reason.as_str());
        if was != Some(*reason) {
            publish(&hub, &ctx, EventType::Warning, reason, message.clone()).await;
        }
    }
    if hub.status.as_ref() != Some(&status) {
        crate::kubernetes::apply_status::<Hub>(&ctx.client, &ns, &name, FIELD_MANAGER, &status).await?;
    }
    ctx.backoff.succeeded(&super::backoff_key(hub.as_ref()));
    // Secret and webhook changes trigger reconciles; this is a safety net.
    Ok(Action::requeue(Duration::from_secs(3600)))
}

/// (webhooks of the hub, of which active).
fn webhook_counts<'a>(webhooks: impl Iterator<Item = &'a Webhook>, ns: &str, hub: &str) -> (u32, u32) {
    webhooks
        .filter(|w| w.namespace().as_deref() == Some(ns) && w.spec.hub == hub)
        .fold((0, 0), |(total, active), w| {
            (total + 1, active + u32::from(w.spec.active))
        })
}

async fn publish(hub: &Hub, ctx: &Context, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &hub.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish event");
    }
}
