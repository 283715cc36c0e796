//! Where Deliveries live: as `Delivery` objects in the Kubernetes API (the
//! default: nothing to install, every delivery visible with kubectl), or in
//! Postgres, for volumes the API server cannot carry.
//!
//! The store is chosen once at start-up (`Store::open`). Everything that
//! reads or writes deliveries outside the delivery engine (ingest, failure
//! notifications, the console, the plugin) does it through `Deliveries`,
//! built for an identity: the process's own, or a user's, whose RBAC then
//! decides what they see whatever the store.

pub mod history;
pub mod kubernetes;
pub mod memory;
pub mod paging;
pub mod postgres;
pub mod retention;
pub mod turns;

use crate::resources::delivery::{Delivery, DeliveryStatus, Phase};
use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use std::sync::Arc;
use std::time::Duration;

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
    /// A watch's position is too old to go on from: list again.
    #[error("{0}")]
    Expired(String),
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

    /// Several deliveries by (namespace, name), in that order, leaving out
    /// those not there. One read each here; a store that can read them
    /// together does (Postgres: one query).
    async fn get_many(&self, names: &[(String, String)]) -> Result<Vec<Delivery>, StoreError> {
        let mut found = Vec::with_capacity(names.len());
        for (namespace, name) in names {
            found.extend(self.get(namespace, name).await?);
        }
        Ok(found)
    }

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

    /// A page of the deliveries (of `namespace`, or of all; of `webhook`,
    /// or of every one), newest first, after `after` (a `Listed::next` this
    /// store gave), at most `limit`. A store that cannot page reads each
    /// webhook's newest `PAGED_MOST` and pages them in memory.
    async fn page(
        &self,
        namespace: Option<&str>,
        webhook: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<paging::Listed, StoreError> {
        let found = self.list(namespace, webhook, &[], paging::PAGED_MOST).await?;
        paging::page_in_memory(found, after, limit)
    }

    /// Where the store's changes stand now: a position `changed_since` takes.
    /// `None`: this store is not watched this way.
    async fn position(&self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    /// The deliveries (of `namespace`, or of all) written after `position`
    /// ((namespace, name), oldest write first), and the position after
    /// them. `Expired` when more changed than one answer holds, or the
    /// position is not one this store gave.
    async fn changed_since(
        &self,
        _namespace: Option<&str>,
        _position: &str,
    ) -> Result<(Vec<(String, String)>, String), StoreError> {
        Err(StoreError::Invalid("this store has no change positions".into()))
    }
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

/// A delivery the store hands the engine to attempt now.
#[derive(Clone, Debug)]
pub struct Due {
    pub namespace: String,
    pub name: String,
    pub webhook: String,
    /// The delivery, when the store holds it whole; else the engine loads
    /// it (`Queue::load`) once it holds the delivery's slots, so a backlog
    /// coming due at once is read as fast as it can be sent.
    pub delivery: Option<Arc<Delivery>>,
    /// The version it was due at: a load is never older.
    pub version: Option<String>,
    /// Brought forward although not due (its webhook was deactivated): to
    /// be attempted, and so cancelled, now.
    pub early: bool,
    /// Where the store claims: when this process's claim ends, by its own
    /// clock. No request is started that could outlast it.
    pub claimed_until: Option<std::time::Instant>,
}

/// A due delivery as loaded.
#[derive(Debug)]
pub enum Loaded {
    Due(Delivery),
    /// Changed meanwhile (finished, or due later).
    NotDue(Delivery),
    Gone,
}

/// What became of a due delivery, for the store to schedule what follows.
#[derive(Debug)]
pub enum Settled {
    /// An attempt was recorded; the delivery as stored.
    Recorded(Delivery),
    /// Someone else recorded it first, or it changed before it was sent;
    /// the delivery as it is now.
    Superseded(Delivery),
    Gone,
    /// Nothing was sent: this process may not act (any more).
    NotSent,
    /// Nothing was sent for a reason that may pass: due again shortly.
    Deferred,
    /// Nothing was sent: its webhook is paused. Due again, in its place,
    /// once the webhook is resumed.
    Paused,
    /// Nothing was sent: its webhook's rate limit has no turn for it within
    /// its claim. Due again after this long.
    Later(Duration),
    /// A request may have reached the handler but its outcome is not
    /// recorded: not attempted again until the delivery changes (or its
    /// claim runs out), and then under the same id. The version the attempt
    /// was made from.
    Unrecorded(Option<String>),
}

/// How many deliveries of each webhook may be in flight, for stores that
/// claim (others leave it to the engine's slots, but hold back a paused
/// webhook's, whose limit is 0).
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// (namespace, webhook, limit) where it differs from `default`.
    pub webhooks: Vec<(String, String, u32)>,
    pub default: u32,
    /// What one namespace may hold of this replica's claims.
    pub per_namespace: usize,
}

impl Limits {
    /// The webhooks nothing may be sent to now (`spec.paused`).
    pub fn paused(&self) -> std::collections::HashSet<(&str, &str)> {
        self.webhooks
            .iter()
            .filter(|(_, _, limit)| *limit == 0)
            .map(|(ns, w, _)| (ns.as_str(), w.as_str()))
            .collect()
    }
}

/// Where attempts are recorded.
#[async_trait::async_trait]
pub trait Records: Send + Sync {
    /// Writes an attempt's `status` to `delivery` (as the engine read it),
    /// only if nobody recorded progress on it since and, where deliveries
    /// are claimed, while `claimant` still holds it. One write: the engine
    /// retries a failed one (never the request), and compacts the record
    /// once when the store refuses it as `Invalid` or `TooLarge`.
    async fn record(&self, delivery: &Delivery, status: &DeliveryStatus, claimant: &str)
    -> Result<Written, StoreError>;
}

/// Turns to send to a webhook with a rate limit (`delivery.rateLimit`),
/// counted across every process that delivers.
#[async_trait::async_trait]
pub trait Turns: Send + Sync {
    /// Takes a turn to send to `webhook` at `rate`: `None` when the request
    /// may go now, else how long until it may (nothing is reserved).
    async fn take_turn(
        &self,
        namespace: &str,
        webhook: &str,
        rate: crate::store::turns::Rate,
    ) -> Result<Option<Duration>, StoreError>;
}

/// Wait before a delivery deferred before sending is due again.
pub const DEFER: Duration = Duration::from_secs(5);

/// What a store's schedule reads besides deliveries: one namespace (or
/// all), its webhooks and hubs (ordering keys, limits, retention), metrics.
pub struct Scope {
    pub client: kube::Client,
    pub namespace: Option<String>,
    pub webhooks: kube::runtime::reflector::Store<crate::resources::Webhook>,
    pub hubs: kube::runtime::reflector::Store<crate::resources::Hub>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// What the delivery engine sees of a store's schedule: due deliveries in,
/// what became of them out (records go through `Records`).
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Whether every replica delivers, each claiming what it sends (else one
    /// leader delivers everything).
    fn claims(&self) -> bool {
        false
    }

    /// Whether `next` reads its `limits` argument (claims do; the memory
    /// store reads paused webhooks from it); the engine computes them only
    /// then, not for every batch the Kubernetes schedule hands out (which
    /// reads the webhooks itself).
    fn reads_limits(&self) -> bool {
        self.claims()
    }

    /// Keeps `claimant` alive for `ttl`, where the store claims: its claims
    /// are others' once it stops.
    async fn heartbeat(&self, _claimant: &str, _ttl: Duration) -> Result<(), StoreError> {
        Ok(())
    }

    /// Waits until deliveries are due and hands them out: where the store
    /// claims, at most `room`, claimed for `claimant` for `lease` within
    /// `limits`; else every one that came due (the engine's slots bound what
    /// runs). Deliveries waiting for an earlier one of their ordering key,
    /// or of a paused webhook (limit 0), are not handed out. May answer
    /// none after a short wait, so the engine asks again with its limits
    /// as they are then.
    async fn next(&self, claimant: &str, room: usize, lease: Duration, limits: &Limits)
    -> Result<Vec<Due>, StoreError>;

    /// Reads a due delivery handed out without it.
    async fn load(&self, due: &Due) -> Result<Loaded, StoreError>;

    /// What became of a due delivery.
    async fn settle(&self, due: &Due, claimant: &str, settled: Settled);

    /// Makes every unfinished delivery of a webhook due now (it was
    /// deactivated: they are cancelled at once, not at their retry).
    async fn hasten(&self, namespace: &str, webhook: &str);

    /// Every few seconds (`round` counts them): retention, statistics,
    /// safety nets, the pending gauge. Slow work here holds up no claim.
    async fn housekeeping(&self, round: u64);
}

/// The store chosen at start-up.
#[derive(Clone)]
pub enum Store {
    Kubernetes,
    Postgres(Arc<postgres::Postgres>),
    /// In this process's memory: for tests (not durable, no RBAC of its own).
    Memory(Arc<memory::Memory>),
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
            Store::Memory(memory) => memory.clone(),
        }
    }

    /// Where the engine records attempts, with `client`'s identity for
    /// Kubernetes.
    pub fn records(&self, client: &kube::Client) -> Arc<dyn Records> {
        match self {
            Store::Kubernetes => Arc::new(kubernetes::Objects::new(client.clone())),
            Store::Postgres(db) => db.clone(),
            Store::Memory(memory) => memory.clone(),
        }
    }

    /// The schedule the engine takes due deliveries from, for `scope`.
    pub fn queue(&self, scope: Scope) -> Arc<dyn Queue> {
        match self {
            Store::Kubernetes => kubernetes::schedule::Schedule::start(scope),
            Store::Postgres(db) => Arc::new(postgres::claims::Claims::new(db.clone(), scope)),
            Store::Memory(memory) => memory.clone(),
        }
    }

    /// Where webhooks' request rates are kept: in the database, shared by
    /// every replica, where every replica delivers; else in this process
    /// (one leader delivers everything).
    pub fn turns(&self) -> Arc<dyn Turns> {
        match self {
            Store::Postgres(db) => db.clone(),
            Store::Kubernetes | Store::Memory(_) => Arc::new(crate::store::turns::LocalTurns::default()),
        }
    }

    /// Whether every replica delivers, each claiming what it sends (else
    /// one leader delivers everything).
    pub fn claims(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// The store's name, as `--store` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Store::Kubernetes => "kubernetes",
            Store::Postgres(_) => "postgres",
            Store::Memory(_) => "memory",
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

/// When `delivery` should next be attempted, or `None` if it is finished
/// (and no redelivery was asked for).
pub fn due_at(delivery: &Delivery) -> Option<Timestamp> {
    if delivery.redelivery_request().is_some() {
        return Some(Timestamp::UNIX_EPOCH);
    }
    match delivery.status.as_ref() {
        None => Some(Timestamp::UNIX_EPOCH),
        Some(s) if s.phase.is_finished() => None,
        Some(s) => match s.phase {
            Phase::Retrying => Some(s.next_attempt_at.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH)),
            _ => Some(Timestamp::UNIX_EPOCH),
        },
    }
}

/// Keeps deliveries in `phases` (all, when empty).
pub fn in_phases(deliveries: Vec<Delivery>, phases: &[Phase]) -> Vec<Delivery> {
    deliveries
        .into_iter()
        .filter(|d| phases.is_empty() || phases.contains(&d.status.as_ref().map(|s| s.phase).unwrap_or_default()))
        .collect()
}
