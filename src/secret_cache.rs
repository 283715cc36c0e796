//! Secret values for signing, custom headers and ingest tokens, read on
//! demand and cached until the Secret changes. A metadata-only watch tells
//! which version of each Secret is current, so a cached value is never used
//! after its Secret was edited or rotated, and only Secrets actually used are
//! held in memory.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

type Key = (String, String);

#[derive(Default)]
struct Entries {
    /// Latest resourceVersion seen by the watch, per Secret.
    current: HashMap<Key, String>,
    /// Fetched Secrets.
    cached: HashMap<Key, Arc<Secret>>,
    /// Watches that have listed every Secret once: a namespace, or all (`None`).
    listed: HashSet<Option<String>>,
}

pub struct SecretCache {
    client: Client,
    entries: Mutex<Entries>,
}

impl SecretCache {
    pub fn new(client: Client) -> Arc<Self> {
        Arc::new(Self {
            client,
            entries: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the current versions up to date until the stream ends.
    pub async fn watch(self: Arc<Self>, namespace: Option<String>) {
        let api: Api<PartialObjectMeta<Secret>> = match &namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let Ok(event) = event else { continue };
            let mut entries = self.lock();
            match event {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                    let key = (s.namespace().unwrap_or_default(), s.name_any());
                    let rv = s.resource_version().unwrap_or_default();
                    if entries
                        .cached
                        .get(&key)
                        .is_some_and(|c| c.resource_version().as_deref() != Some(rv.as_str()))
                    {
                        entries.cached.remove(&key);
                    }
                    entries.current.insert(key, rv);
                }
                watcher::Event::Delete(s) => {
                    let key = (s.namespace().unwrap_or_default(), s.name_any());
                    entries.current.remove(&key);
                    entries.cached.remove(&key);
                }
                watcher::Event::InitDone => {
                    entries.listed.insert(namespace.clone());
                }
                watcher::Event::Init => {}
            }
        }
    }

    /// As `get`, but a Secret the watch has not seen (once it has listed
    /// them all) is missing without asking the API server: for lookups
    /// anyone can cause, such as ingest's for requests not yet
    /// authenticated. (A Secret created a moment ago may be missed.)
    pub async fn get_seen(&self, namespace: &str, name: &str) -> Result<Option<Arc<Secret>>, kube::Error> {
        {
            let entries = self.lock();
            let listed = entries.listed.contains(&None) || entries.listed.contains(&Some(namespace.to_string()));
            if listed && !entries.current.contains_key(&(namespace.to_string(), name.to_string())) {
                return Ok(None);
            }
        }
        self.get(namespace, name).await
    }

    /// The Secret, or `None` if it does not exist.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<Arc<Secret>>, kube::Error> {
        let key = (namespace.to_string(), name.to_string());
        {
            let entries = self.lock();
            if let (Some(cached), Some(current)) = (entries.cached.get(&key), entries.current.get(&key))
                && cached.resource_version().as_deref() == Some(current.as_str())
            {
                return Ok(Some(cached.clone()));
            }
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        // managedFields are never read here; not keeping them saves kilobytes per Secret.
        let fetched = api.get_opt(name).await?.map(|mut s| {
            s.metadata.managed_fields = None;
            Arc::new(s)
        });
        if let Some(secret) = &fetched {
            let mut entries = self.lock();
            // Keep it only if it is the version the watch calls current;
            // otherwise the next read fetches again.
            if entries.current.get(&key).map(String::as_str) == secret.metadata.resource_version.as_deref() {
                entries.cached.insert(key, secret.clone());
            }
        }
        Ok(fetched)
    }
}
