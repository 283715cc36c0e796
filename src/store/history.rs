//! Deliveries as a user reads them through the Kubernetes API, whatever the
//! store: the history API (`history.hookrelay.dev`, served by `hookrelay
//! api`) where it is served, else the Delivery objects themselves. The
//! plugin and the console use it with the user's own identity, so RBAC on
//! `deliveries` decides what they see and nobody but hookrelay's own
//! processes holds the database's credentials.

use super::kubernetes::{Objects, named_changes, redelivery_patch};
use super::{Deliveries, Fanout, StoreError, in_phases};
use crate::resources::WEBHOOK_LABEL;
use crate::resources::delivery::{Delivery, Phase};
use crate::resources::{HISTORY_GROUP as GROUP, HISTORY_VERSION as VERSION};
use futures::StreamExt;
use futures::stream::BoxStream;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::sync::Arc;

/// The deliveries `client`'s user may see, through the history API when
/// the cluster serves it (the Postgres store), else as Delivery objects.
pub async fn for_user(client: &Client) -> Arc<dyn Deliveries> {
    reader(client, served(client).await)
}

/// The deliveries `client`'s user may see, through the history API
/// (`history`) or as Delivery objects.
pub fn reader(client: &Client, history: bool) -> Arc<dyn Deliveries> {
    if history {
        Arc::new(History::new(client.clone()))
    } else {
        Arc::new(Objects::new(client.clone()))
    }
}

/// What a watch of deliveries (of `namespace`, or all) with `config` sees,
/// through the history API (`history`) or of Delivery objects.
pub fn watch(
    client: &Client,
    history: bool,
    namespace: Option<&str>,
    config: watcher::Config,
) -> BoxStream<'static, Result<watcher::Event<Delivery>, watcher::Error>> {
    if !history {
        return watcher(crate::kubernetes::namespaced_api::<Delivery>(client, namespace), config)
            .default_backoff()
            .boxed();
    }
    let api = History::new(client.clone()).api(namespace);
    watcher(api, config)
        .default_backoff()
        .filter_map(|event| async move {
            let parsed = |o: DynamicObject| o.try_parse::<Delivery>().ok();
            Some(match event {
                Ok(watcher::Event::Apply(o)) => Ok(watcher::Event::Apply(parsed(o)?)),
                Ok(watcher::Event::InitApply(o)) => Ok(watcher::Event::InitApply(parsed(o)?)),
                Ok(watcher::Event::Delete(o)) => Ok(watcher::Event::Delete(parsed(o)?)),
                Ok(watcher::Event::Init) => Ok(watcher::Event::Init),
                Ok(watcher::Event::InitDone) => Ok(watcher::Event::InitDone),
                Err(e) => Err(e),
            })
        })
        .boxed()
}

/// Whether the cluster serves the history API now (its APIService is
/// available).
pub async fn served(client: &Client) -> bool {
    client
        .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
        .await
        .is_ok_and(|resources| resources.resources.iter().any(|r| r.name == "deliveries"))
}

/// The history API's `deliveries`, as `client`'s identity sees them.
pub struct History {
    client: Client,
    resource: ApiResource,
}

impl History {
    pub fn new(client: Client) -> Self {
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, "Delivery"), "deliveries");
        Self { client, resource }
    }

    fn api(&self, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &self.resource),
            None => Api::all_with(self.client.clone(), &self.resource),
        }
    }
}

fn parse(object: DynamicObject) -> Result<Delivery, StoreError> {
    object.try_parse().map_err(|e| StoreError::Api {
        code: None,
        message: format!("the history API sent a delivery that does not decode: {e}"),
    })
}

#[async_trait::async_trait]
impl Deliveries for History {
    /// Test deliveries, one at a time: the server builds each from the
    /// webhook, event name and payload it names.
    async fn insert<'a>(
        &'a self,
        namespace: &'a str,
        deliveries: Fanout<'a>,
        _generated_id: bool,
    ) -> Result<(), StoreError> {
        for new in deliveries {
            let object: DynamicObject = serde_json::from_value(serde_json::to_value(&new.delivery).unwrap_or_default())
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            self.api(Some(namespace))
                .create(&PostParams::default(), &object)
                .await?;
        }
        Ok(())
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Delivery>, StoreError> {
        self.api(Some(namespace)).get_opt(name).await?.map(parse).transpose()
    }

    async fn list(
        &self,
        namespace: Option<&str>,
        webhook: Option<&str>,
        phases: &[Phase],
        most: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        // Pages come newest first: the newest `most` in all are enough
        // (this process need not hold a tenant's whole history).
        let mut params = ListParams::default().limit(most.clamp(1, 500) as u32);
        if let Some(w) = webhook {
            params = params.labels(&format!("{WEBHOOK_LABEL}={w}"));
        }
        let api = self.api(namespace);
        let mut all = Vec::new();
        loop {
            let page = api.list(&params).await?;
            for object in page.items {
                all.push(parse(object)?);
            }
            if all.len() >= most {
                break;
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(next) => params = params.continue_token(&next),
                None => break,
            }
        }
        Ok(in_phases(all, phases))
    }

    async fn redeliver(&self, namespace: &str, name: &str, request: &str) -> Result<(), StoreError> {
        match self
            .api(Some(namespace))
            .patch(name, &PatchParams::default(), &redelivery_patch(request))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Err(StoreError::Busy),
            Err(e) => Err(e.into()),
        }
    }

    async fn changes(&self, namespace: &str, webhook: &str) -> Result<BoxStream<'static, String>, StoreError> {
        let config = watcher::Config::default().labels(&format!("{WEBHOOK_LABEL}={webhook}"));
        Ok(named_changes(self.api(Some(namespace)), config))
    }
}
