//! The Postgres store behind the seam: as ingest, notifications and the
//! delivery engine use it, with the operator's own rights (users get
//! `access::Reviewed`).

use super::{Postgres, version_of};
use crate::resources::delivery::{Delivery, DeliveryStatus, Phase};
use crate::store::{Deliveries, Fanout, Records, StoreError, Written};
use futures::stream::BoxStream;
use kube::ResourceExt;

#[async_trait::async_trait]
impl Deliveries for Postgres {
    async fn insert<'a>(
        &'a self,
        _namespace: &'a str,
        deliveries: Fanout<'a>,
        _generated_id: bool,
    ) -> Result<(), StoreError> {
        // One transaction (grouped with concurrent events): all or none.
        self.insert_event(deliveries).await.map_err(StoreError::Database)
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Delivery>, StoreError> {
        self.read(namespace, name).await.map_err(StoreError::Database)
    }

    async fn list(
        &self,
        namespace: Option<&str>,
        webhook: Option<&str>,
        phases: &[Phase],
        most: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.recent(namespace, webhook, phases, most as i64)
            .await
            .map_err(StoreError::Database)
    }

    async fn redeliver(&self, namespace: &str, name: &str, request: &str) -> Result<(), StoreError> {
        match Postgres::redeliver(self, namespace, name, request).await {
            Ok(true) => Ok(()),
            // Refused while claimed, or not there at all.
            Ok(false) => match self.read(namespace, name).await {
                Ok(Some(_)) => Err(StoreError::Busy),
                Ok(None) => Err(StoreError::NotFound(format!("no delivery {name} in {namespace}"))),
                Err(e) => Err(StoreError::Database(e)),
            },
            Err(e) => Err(StoreError::Database(e)),
        }
    }

    async fn changes(&self, _namespace: &str, _webhook: &str) -> Result<BoxStream<'static, String>, StoreError> {
        Err(StoreError::Invalid(
            "the Postgres store has no change stream of its own; read it as a user (their Webhook is watched)".into(),
        ))
    }
}

#[async_trait::async_trait]
impl Records for Postgres {
    /// One conditional UPDATE: the version the engine read, and the claim
    /// still `claimant`'s.
    async fn record(
        &self,
        delivery: &Delivery,
        status: &DeliveryStatus,
        claimant: &str,
    ) -> Result<Written, StoreError> {
        let Some(seen) = version_of(delivery) else {
            return Err(StoreError::Invalid("the delivery was not read from the store".into()));
        };
        let mut updated = delivery.clone();
        updated.status = Some(status.clone());
        match Postgres::record(self, &updated, seen, claimant).await {
            Ok(Some(stored)) => Ok(Written::Stored(stored)),
            Ok(None) => match self
                .read(&delivery.namespace().unwrap_or_default(), &delivery.name_any())
                .await
            {
                Ok(None) => Ok(Written::Gone),
                Ok(Some(fresh)) => Ok(Written::Superseded(fresh)),
                Err(e) => Err(StoreError::Database(format!("after a conflict: {e}"))),
            },
            Err(e) => Err(StoreError::Database(e)),
        }
    }
}
