//! The Kubernetes store: every delivery a `Delivery` object, read and
//! written with the identity of the client it is built with, so RBAC
//! decides what a user sees.

pub mod ordering;
mod record;
pub mod schedule;

use super::{Deliveries, Fanout, NewDelivery, StoreError, in_phases};
use crate::resources::WEBHOOK_LABEL;
use crate::resources::delivery::{Delivery, Phase, REDELIVER_ANNOTATION};
use futures::StreamExt;
use futures::stream::BoxStream;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::time::Duration;

/// Deliveries of one event created at once: an event for a thousand
/// webhooks must not become a thousand requests at once (memory, and a
/// burst the API server would throttle).
const CREATE_CONCURRENCY: usize = 16;
/// The longest one create may take before the event is refused.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Delivery objects, as `client`'s identity sees them.
pub struct Objects {
    client: Client,
}

impl Objects {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    fn api(&self, namespace: Option<&str>) -> Api<Delivery> {
        crate::kubernetes::namespaced_api(&self.client, namespace)
    }
}

#[async_trait::async_trait]
impl Deliveries for Objects {
    async fn insert<'a>(
        &'a self,
        namespace: &'a str,
        deliveries: Fanout<'a>,
        generated_id: bool,
    ) -> Result<(), StoreError> {
        let api = self.api(Some(namespace));
        let create = |d: NewDelivery| {
            let api = api.clone();
            async move {
                let name = d.delivery.name_any();
                let created =
                    match tokio::time::timeout(CREATE_TIMEOUT, api.create(&PostParams::default(), &d.delivery)).await {
                        Ok(Ok(_)) => Ok(true),
                        Ok(Err(kube::Error::Api(e))) if e.code == 409 => Ok(false),
                        Ok(Err(e)) => Err(StoreError::from(e)),
                        Err(_) => Err(StoreError::Api {
                            code: None,
                            message: format!("no answer within {}s", CREATE_TIMEOUT.as_secs()),
                        }),
                    };
                (name, created)
            }
        };
        let results: Vec<(String, Result<bool, StoreError>)> = futures::stream::iter(deliveries)
            .map(create)
            .buffered(CREATE_CONCURRENCY)
            .collect()
            .await;
        let Some(error) = results.iter().find_map(|(_, r)| r.as_ref().err()).cloned() else {
            return Ok(());
        };
        if generated_id {
            for (name, r) in &results {
                if matches!(r, Ok(true)) {
                    let _ = api.delete(name, &DeleteParams::default()).await;
                }
            }
        }
        Err(error)
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Delivery>, StoreError> {
        Ok(self.api(Some(namespace)).get_opt(name).await?)
    }

    async fn list(
        &self,
        namespace: Option<&str>,
        webhook: Option<&str>,
        phases: &[Phase],
        _most: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let params = match webhook {
            Some(w) => ListParams::default().labels(&format!("{WEBHOOK_LABEL}={w}")),
            None => ListParams::default(),
        };
        Ok(in_phases(self.api(namespace).list(&params).await?.items, phases))
    }

    async fn redeliver(&self, namespace: &str, name: &str, request: &str) -> Result<(), StoreError> {
        self.api(Some(namespace))
            .patch(name, &PatchParams::default(), &redelivery_patch(request))
            .await?;
        Ok(())
    }

    async fn changes(&self, namespace: &str, webhook: &str) -> Result<BoxStream<'static, String>, StoreError> {
        let config = watcher::Config::default().labels(&format!("{WEBHOOK_LABEL}={webhook}"));
        Ok(named_changes(self.api(Some(namespace)), config))
    }
}

/// The merge patch that asks for a new round of attempts (stamped
/// `request`), on a Delivery object or through the history API.
pub fn redelivery_patch(request: &str) -> Patch<serde_json::Value> {
    Patch::Merge(serde_json::json!({ "metadata": { "annotations": { REDELIVER_ANNOTATION: request } } }))
}

/// The name of every object `config`'s watch of `api` sees applied.
pub fn named_changes<K>(api: Api<K>, config: watcher::Config) -> BoxStream<'static, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, config)
        .default_backoff()
        .applied_objects()
        .filter_map(|o| async move { o.ok().map(|o| o.name_any()) })
        .boxed()
}
