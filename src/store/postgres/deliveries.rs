//! The Postgres store as ingest and notifications use it: with the
//! operator's own rights (users get `access::Reviewed`).

use super::Postgres;
use crate::resources::delivery::{Delivery, Phase};
use crate::store::{Deliveries, Fanout, StoreError};
use futures::stream::BoxStream;

#[async_trait::async_trait]
impl Deliveries for Postgres {
    async fn insert<'a>(
        &'a self,
        _namespace: &'a str,
        deliveries: Fanout<'a>,
        _generated_id: bool,
    ) -> Result<(), StoreError> {
        // One transaction (grouped with concurrent events): all or none.
        Postgres::insert(self, deliveries.collect())
            .await
            .map_err(StoreError::Database)
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
        let (Some(ns), Some(webhook)) = (namespace, webhook) else {
            return Err(StoreError::Invalid(
                "the Postgres store lists one webhook's deliveries at a time".into(),
            ));
        };
        self.recent(ns, webhook, phases, most as i64)
            .await
            .map_err(StoreError::Database)
    }

    async fn redeliver(&self, namespace: &str, name: &str, request: &str) -> Result<(), StoreError> {
        match Postgres::redeliver(self, namespace, name, request).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::Busy),
            Err(e) => Err(StoreError::Database(e)),
        }
    }

    async fn changes(&self, _namespace: &str, _webhook: &str) -> Result<BoxStream<'static, String>, StoreError> {
        Err(StoreError::Invalid(
            "the Postgres store has no change stream of its own; read it as a user (their Webhook is watched)".into(),
        ))
    }
}
