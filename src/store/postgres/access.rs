//! The Postgres store as a user may see it. Rows carry no RBAC of their
//! own, so each read is allowed by an access review with the user's
//! identity of what the same request on Delivery objects would need: get,
//! list and watch `deliveries` to read, create to insert, patch to
//! redeliver (not the rights on Webhooks: a role may grant those alone).

use super::Postgres;
use crate::resources::Webhook;
use crate::resources::delivery::{Delivery, Phase};
use crate::store::kubernetes::named_changes;
use crate::store::{Deliveries, Fanout, StoreError, allowed};
use futures::stream::BoxStream;
use kube::runtime::watcher;
use kube::{Api, Client};
use std::sync::Arc;

/// The store, reviewed per request with `client`'s identity.
pub struct Reviewed {
    db: Arc<Postgres>,
    client: Client,
}

impl Reviewed {
    pub fn new(db: Arc<Postgres>, client: Client) -> Self {
        Self { db, client }
    }

    async fn may(&self, ns: &str, verb: &str, resource: &str, name: Option<&str>) -> bool {
        allowed(&self.client, ns, verb, resource, name).await
    }
}

fn forbidden(verb: &str, resource: &str, ns: &str) -> StoreError {
    StoreError::Forbidden(format!("an access review says you may not {verb} {resource} in {ns}"))
}

#[async_trait::async_trait]
impl Deliveries for Reviewed {
    async fn insert<'a>(
        &'a self,
        namespace: &'a str,
        deliveries: Fanout<'a>,
        generated_id: bool,
    ) -> Result<(), StoreError> {
        // What creating a Delivery object would need.
        if !self.may(namespace, "create", "deliveries", None).await {
            return Err(forbidden("create", "deliveries", namespace));
        }
        Deliveries::insert(&*self.db, namespace, deliveries, generated_id).await
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Delivery>, StoreError> {
        // What reading a Delivery object would need; one answer for missing
        // and not allowed, so nothing is revealed.
        if !self.may(namespace, "get", "deliveries", Some(name)).await {
            return Ok(None);
        }
        Deliveries::get(&*self.db, namespace, name).await
    }

    async fn list(
        &self,
        namespace: Option<&str>,
        webhook: Option<&str>,
        phases: &[Phase],
        most: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        // What listing Delivery objects would need: in the namespace, or
        // (no namespace) in all of them.
        let scope = namespace.unwrap_or("");
        if !self.may(scope, "list", "deliveries", None).await {
            let place = namespace.map_or("all namespaces".to_string(), |ns| ns.to_string());
            return Err(forbidden("list", "deliveries", &place));
        }
        Deliveries::list(&*self.db, namespace, webhook, phases, most).await
    }

    async fn redeliver(&self, namespace: &str, name: &str, request: &str) -> Result<(), StoreError> {
        // What stamping a Delivery object would need.
        if self.get(namespace, name).await?.is_none() {
            return Err(StoreError::NotFound(format!(
                "no delivery {name} that you may read in {namespace}"
            )));
        }
        if !self.may(namespace, "patch", "deliveries", Some(name)).await {
            return Err(forbidden("patch", "deliveries", namespace));
        }
        Deliveries::redeliver(&*self.db, namespace, name, request).await
    }

    async fn changes(&self, namespace: &str, webhook: &str) -> Result<BoxStream<'static, String>, StoreError> {
        // No watch in a database, and no polling of it either: the
        // Webhook's delivery summary changes when its deliveries are
        // recorded, so the Webhook (read as the user) is watched instead.
        if !self.may(namespace, "watch", "deliveries", None).await {
            return Err(forbidden("watch", "deliveries", namespace));
        }
        let api: Api<Webhook> = Api::namespaced(self.client.clone(), namespace);
        Ok(named_changes(
            api,
            watcher::Config::default().fields(&format!("metadata.name={webhook}")),
        ))
    }
}
