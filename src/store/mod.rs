//! Where Deliveries live: as `Delivery` objects in the Kubernetes API (the
//! default: nothing to install, every delivery visible with kubectl), or in
//! Postgres, for volumes the API server cannot carry.
//!
//! The store is chosen once at start-up (`Store::open`). Everything that
//! reads or writes deliveries outside the delivery engine (ingest, failure
//! notifications, the console, the plugin) does it through `Deliveries`,
//! built for an identity: the process's own, or a user's, whose RBAC then
//! decides what they see whatever the store.

pub mod kubernetes;
pub mod memory;
pub mod postgres;
pub mod retention;

use crate::resources::delivery::{Delivery, DeliveryStatus, Phase};
use futures::stream::BoxStream;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use std::sync::Arc;

/// The delivery store a controller or ingest uses (`--store`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `Delivery` objects in the Kubernetes API.
    #[default]
    Kubernetes,
    /// Rows in a Postgres database (`--postgres-url`).
    Postgres,
}

/// Why a store did not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The delivery itself is refused: storing it again will not help.
    #[error("{0}")]
    Invalid(String),
    /// The delivery is larger than the store takes.
    #[error("{0}")]
    TooLarge(String),
    /// The identity the store was built for may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such delivery (or none this identity may see).
    #[error("{0}")]
    NotFound(String),
    /// An attempt of the delivery is under way; its record must not be overwritten.
    #[error("an attempt is under way")]
    Busy,
    /// The Kubernetes API server did not answer, or answered with an error
    /// of its own (`code`, when it answered).
    #[error("{}", match .code { Some(code) => format!("{code}: {message}"), None => message.clone() })]
    Api { code: Option<u16>, message: String },
    /// The database did not answer or failed.
    #[error("{0}")]
    Database(String),
}

impl From<kube::Error> for StoreError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => match s.code {
                400 | 422 => StoreError::Invalid(s.message),
                413 => StoreError::TooLarge(s.message),
                403 => StoreError::Forbidden(s.message),
                404 => StoreError::NotFound(s.message),
                code => StoreError::Api {
                    code: Some(code),
                    message: s.message,
                },
            },
            other => StoreError::Api {
                code: None,
                message: other.to_string(),
            },
        }
    }
}

/// A new delivery to store.
pub struct NewDelivery {
    pub delivery: Delivery,
    /// The value of the webhook's ordering key in this event, if it orders.
    pub ordering_key: Option<String>,
}

/// An event's deliveries, built as they are taken.
pub type Fanout<'a> = Box<dyn Iterator<Item = NewDelivery> + Send + 'a>;

/// Deliveries as one identity may read and write them.
#[async_trait::async_trait]
pub trait Deliveries: Send + Sync {
    /// Stores an event's deliveries, all or none: `Ok` once every one is
    /// stored; one that exists already (a repeated event) counts as stored.
    /// They are built one at a time as the store takes them, so a store may
    /// hold only a few copies of the payload at once. `generated_id`: the
    /// event's id was chosen here (its sender cannot repeat it), so what was
    /// stored of a refused event is removed.
    async fn insert<'a>(
        &'a self,
        namespace: &'a str,
        deliveries: Fanout<'a>,
        generated_id: bool,
    ) -> Result<(), StoreError>;

    /// One delivery, `None` when there is none this identity may read.
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Delivery>, StoreError>;

    /// Deliveries of `webhook` (of every webhook, `None`) in `namespace` (in
    /// every namespace, `None`, where the store can) in one of `phases` (any,
    /// when empty), in no particular order: at least the newest `most` of
    /// each webhook (a store may return more).
    async fn list(
        &self,
        namespace: Option<&str>,
        webhook: Option<&str>,
        phases: &[Phase],
        most: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Asks for a new round of attempts of a finished (or any) delivery,
    /// stamped `request` (`hookrelay.dev/redeliver`). `Busy` while an
    /// attempt is under way where the store can tell.
    async fn redeliver(&self, namespace: &str, name: &str, request: &str) -> Result<(), StoreError>;

    /// A stream that yields (a name) each time a delivery of `webhook` may
    /// have changed, for live pages.
    async fn changes(&self, namespace: &str, webhook: &str) -> Result<BoxStream<'static, String>, StoreError>;
}

/// What became of an attempt's record.
#[derive(Debug)]
pub enum Written {
    /// Stored; the delivery as it is now.
    Stored(Delivery),
    /// Someone else recorded progress on it first (a new leader, or a
    /// replica that took the claim over): theirs stands. The delivery as it
    /// is now.
    Superseded(Delivery),
    /// The delivery is gone.
    Gone,
}

/// The delivery engine's side of a store.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Writes an attempt's `status` to `delivery` (as the engine read it),
    /// only if nobody recorded progress on it since and, where deliveries
    /// are claimed, while `claimant` still holds it. One write: the engine
    /// retries a failed one (never the request), and compacts the record
    /// once when the store refuses it as `Invalid` or `TooLarge`.
    async fn record(&self, delivery: &Delivery, status: &DeliveryStatus, claimant: &str)
    -> Result<Written, StoreError>;
}

/// The store chosen at start-up.
#[derive(Clone)]
pub enum Store {
    Kubernetes,
    Postgres(Arc<postgres::Postgres>),
}

impl Store {
    /// Connects to the store `kind` names (for Postgres: schema migrated).
    /// A missing URL is an error naming the flag. `ca_file`: the PEM bundle
    /// for `sslmode=require`.
    pub async fn open(
        kind: Kind,
        postgres_url: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Store> {
        match kind {
            Kind::Kubernetes => Ok(Store::Kubernetes),
            Kind::Postgres => {
                let url = postgres_url.ok_or_else(|| {
                    anyhow::anyhow!("--store postgres needs --postgres-url (or HOOKRELAY_POSTGRES_URL), e.g. postgres://hookrelay@db:5432/hookrelay")
                })?;
                let ca = read_ca(ca_file)?;
                Ok(Store::Postgres(postgres::Postgres::connect(url, ca.as_deref()).await?))
            }
        }
    }

    /// The deliveries as this process may use them (ingest, notifications):
    /// with `client`'s identity for Kubernetes, all of them in Postgres.
    pub fn deliveries(&self, client: &kube::Client) -> Arc<dyn Deliveries> {
        match self {
            Store::Kubernetes => Arc::new(kubernetes::Objects::new(client.clone())),
            Store::Postgres(db) => db.clone(),
        }
    }

    /// The delivery engine's side of the store, with `client`'s identity
    /// for Kubernetes.
    pub fn queue(&self, client: &kube::Client) -> Arc<dyn Queue> {
        match self {
            Store::Kubernetes => Arc::new(kubernetes::Objects::new(client.clone())),
            Store::Postgres(db) => db.clone(),
        }
    }

    /// The deliveries as a user may see them: what their identity
    /// (`client`) may read in RBAC, whatever the store.
    pub fn for_user(&self, client: &kube::Client) -> Arc<dyn Deliveries> {
        match self {
            Store::Kubernetes => Arc::new(kubernetes::Objects::new(client.clone())),
            Store::Postgres(db) => Arc::new(postgres::access::Reviewed::new(db.clone(), client.clone())),
        }
    }

    /// The Postgres store, when deliveries live there (the delivery
    /// engine's claims).
    pub fn postgres(&self) -> Option<&Arc<postgres::Postgres>> {
        match self {
            Store::Postgres(db) => Some(db),
            Store::Kubernetes => None,
        }
    }
}

/// The CA bundle named by `--postgres-ca-file`, if any.
pub fn read_ca(ca_file: Option<&std::path::Path>) -> anyhow::Result<Option<Vec<u8>>> {
    ca_file
        .map(|path| std::fs::read(path).map_err(|e| anyhow::anyhow!("--postgres-ca-file {}: {e}", path.display())))
        .transpose()
}

/// Whether the user may `verb` hookrelay's `resource` (`name`, or any) in
/// `ns`, by a SelfSubjectAccessReview with their identity. Deliveries in
/// the Postgres store are shown only to whom RBAC would show them.
pub async fn allowed(client: &kube::Client, ns: &str, verb: &str, resource: &str, name: Option<&str>) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.into()),
                verb: Some(verb.into()),
                group: Some(crate::resources::GROUP.into()),
                resource: Some(resource.into()),
                name: name.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: kube::Api<SelfSubjectAccessReview> = kube::Api::all(client.clone());
    api.create(&kube::api::PostParams::default(), &review)
        .await
        .ok()
        .and_then(|r| r.status)
        .is_some_and(|s| s.allowed)
}

/// Keeps deliveries in `phases` (all, when empty).
pub fn in_phases(deliveries: Vec<Delivery>, phases: &[Phase]) -> Vec<Delivery> {
    deliveries
        .into_iter()
        .filter(|d| phases.is_empty() || phases.contains(&d.status.as_ref().map(|s| s.phase).unwrap_or_default()))
        .collect()
}
