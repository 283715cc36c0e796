//! The Postgres delivery store. A Delivery is one row: the object as JSON
//! (`doc`, the same document a `Delivery` object holds) beside the columns
//! the schedule needs (`due_at`, the claim, the ordering key). Its
//! `version` plays the part of a resourceVersion: every record is an
//! `UPDATE … WHERE version = $seen AND claimed_by = $me`, so a replica
//! whose claim was taken over cannot overwrite the new owner's record.
//!
//! - Ingest inserts an event's deliveries and answers 202 after the commit.
//!   Events arriving while a commit is under way are committed together
//!   (group commit), so throughput does not hinge on one fsync per event.
//! - Every controller replica claims due rows (`claimed_by`, `claim_until`)
//!   and sends them; no leader is needed. A claim holds while its replica's
//!   heartbeat (`hookrelay_claimants`) is alive, for at most `--claim-lease`;
//!   a replica never starts a request its claim would not outlast and stops
//!   sending before its own heartbeat runs out, so a claim taken over (the
//!   replica died) never has a second request in flight beside it.
//! - Per-webhook limits hold across replicas: a claim counts the rows of
//!   the webhook claimed by anyone, and claims of the same namespaces are
//!   taken one at a time (advisory locks), so none misses another's;
//!   claims of other namespaces do not wait for them. Namespaces take
//!   turns (fewest in flight first, at most a share each), and a claim
//!   reads only the head of each webhook's queue, so one tenant's backlog
//!   costs others' claims next to nothing.
//! - A delivery stored while an earlier one of its ordering key is
//!   unfinished is marked `waiting` and left out of the queue; finishing a
//!   delivery queues the next of its key. Both take the key's lock (one of
//!   64 advisory-lock buckets), so a delivery stored as the one before it
//!   finishes is never left waiting; a check every minute would queue it
//!   if it ever were.

pub mod claims;
mod deliveries;

use super::{Fanout, NewDelivery};
use crate::resources::delivery::{Delivery, Phase};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::StreamExt;
use jiff::Timestamp;
use kube::ResourceExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_postgres::AsyncMessage;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Schema versions, applied in order, each once, under an advisory lock (so
/// replicas starting together do not race).
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE hookrelay_deliveries (
    namespace    text NOT NULL,
    name         text NOT NULL,
    webhook      text NOT NULL,
    hub          text NOT NULL,
    -- accept order, for ordering keys
    seq          bigserial,
    version      bigint NOT NULL DEFAULT 1,
    phase        text NOT NULL DEFAULT 'Pending',
    -- when the next attempt is due; NULL once finished
    due_at       timestamptz,
    claimed_by   text,
    claim_until  timestamptz,
    ordering_key text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    -- the Delivery as JSON: metadata, spec and status
    doc          text NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE INDEX hookrelay_deliveries_due ON hookrelay_deliveries (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX hookrelay_deliveries_ordered ON hookrelay_deliveries (namespace, webhook, ordering_key, seq)
    WHERE due_at IS NOT NULL AND ordering_key IS NOT NULL;
CREATE INDEX hookrelay_deliveries_finished ON hookrelay_deliveries (namespace, webhook, completed_at)
    WHERE due_at IS NULL;
"#,
    ),
    (
        2,
        r#"
-- Each delivering process says it is alive; a claim by one that stopped
-- saying so is taken over without waiting for claim_until.
CREATE TABLE hookrelay_claimants (
    claimant    text PRIMARY KEY,
    alive_until timestamptz NOT NULL
);
"#,
    ),
    (
        3,
        r#"
-- Claims read each webhook's queue from its head (so one webhook's long
-- backlog costs a claim only as much as it may take) and count the
-- deliveries in flight from the few claimed rows.
CREATE INDEX hookrelay_deliveries_queue ON hookrelay_deliveries (namespace, webhook, due_at, seq)
    WHERE due_at IS NOT NULL;
CREATE INDEX hookrelay_deliveries_claimed ON hookrelay_deliveries (namespace, webhook)
    WHERE claimed_by IS NOT NULL AND due_at IS NOT NULL;
DROP INDEX hookrelay_deliveries_due;
"#,
    ),
    (
        4,
        r#"
-- A delivery stored while an earlier one with its ordering key is
-- unfinished waits out of the queue (`waiting`) until that one finishes,
-- so claims do not read past it again and again.
ALTER TABLE hookrelay_deliveries ADD COLUMN waiting boolean NOT NULL DEFAULT false;
DROP INDEX hookrelay_deliveries_queue;
CREATE INDEX hookrelay_deliveries_queue ON hookrelay_deliveries (namespace, webhook, due_at, seq)
    WHERE due_at IS NOT NULL AND NOT waiting;
"#,
    ),
    (
        5,
        r#"
-- The transaction that last wrote each row's document, for watches: a watch
-- from a snapshot reads the rows written by transactions it did not see
-- (commit order, which a sequence would not give). Rows written before
-- this version have none and are never reported as changed. (The default
-- is set apart from the column so existing rows are not rewritten.)
ALTER TABLE hookrelay_deliveries ADD COLUMN changed xid8;
ALTER TABLE hookrelay_deliveries ALTER COLUMN changed SET DEFAULT pg_current_xact_id();
CREATE INDEX hookrelay_deliveries_changed ON hookrelay_deliveries (changed);
"#,
    ),
    (
        6,
        r#"
-- Webhooks' request rates (delivery.rateLimit), shared by every replica:
-- the theoretical arrival time of each one's next request (GCRA), in
-- seconds since the epoch.
CREATE TABLE hookrelay_turns (
    namespace text NOT NULL,
    webhook   text NOT NULL,
    tat       double precision NOT NULL,
    PRIMARY KEY (namespace, webhook)
);
"#,
    ),
];

/// Every table the migrations create, for tests and benchmarks that start
/// from an empty store (`DROP TABLE IF EXISTS` these).
pub const TABLES: &str = "hookrelay_deliveries, hookrelay_claimants, hookrelay_turns, hookrelay_schema";

/// The small statements of the hot path, prepared once per connection
/// (`prepare_cached`) like the large ones: unprepared, each costs a round
/// trip and a parse of its own.
const NOTIFY: &str = "SELECT pg_notify($1, '')";
const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
const LOCK_EACH: &str = "SELECT pg_advisory_xact_lock(b) FROM unnest($1::int8[]) AS b";

/// Any number: the advisory lock migrations hold.
const MIGRATION_LOCK: i64 = 0x686f6f6b72656c;
/// The advisory lock a retention sweep holds.
const SWEEP_LOCK: i64 = MIGRATION_LOCK + 1;
/// The advisory lock a claim of every namespace holds, exclusively; a
/// claim of some namespaces holds it shared, and their buckets' locks
/// (`CLAIM_LOCKS + bucket`) exclusively. So claims that could count the
/// same webhook's deliveries are serialised, and claims of other tenants
/// (controllers watching their own namespaces) do not wait for each other.
const CLAIM_LOCK: i64 = MIGRATION_LOCK + 2;
const CLAIM_BUCKETS: i64 = 64;
const CLAIM_LOCKS: i64 = KEY_LOCKS + KEY_BUCKETS;
const LOCK_SHARED: &str = "SELECT pg_advisory_xact_lock_shared($1)";
/// Ordering keys are locked in this many buckets (advisory locks keyed
/// `KEY_LOCKS + bucket`): storing a delivery that waits and finishing the one
/// it waits on take their bucket's lock, so neither misses the other.
const KEY_BUCKETS: i64 = 64;
const KEY_LOCKS: i64 = MIGRATION_LOCK + 16;
/// The channel ingest notifies on commit, so controllers claim at once.
const CHANNEL: &str = "hookrelay_due";
/// How long one statement may take before it counts as failed.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How far past its limit a claim reads into one webhook's due deliveries.
/// Deliveries behind an earlier one of their ordering key wait out of the
/// queue (`waiting`); the few that do not (behind a redelivered earlier one,
/// or stored before schema version 4) are skipped over, up to this many.
const SCAN_DEPTH: i64 = 256;
/// Rows changed since the last statistics after which they are taken again.
const ANALYZE_AFTER: i64 = 10_000;
/// Events committed together at most (rows).
const GROUP_ROWS: usize = 1024;
/// Commits under way at once.
const COMMITTERS: usize = 2;
/// Payload bytes of one event's deliveries held at once: an event whose
/// deliveries take more is stored a chunk at a time (`insert_large`), so a
/// fan-out of 1,000 webhooks × 128 KiB never sits in memory whole.
const CHUNK_BYTES: usize = 1024 * 1024;

struct Group {
    rows: Vec<NewDelivery>,
    done: oneshot::Sender<Result<(), String>>,
}

/// How many deliveries a claim may have in flight.
pub struct ClaimLimits<'a> {
    /// Per webhook (namespace, name, limit), across all claimants.
    pub webhooks: &'a [(String, String, i32)],
    /// For webhooks not listed.
    pub default: i32,
    /// Per namespace, this claimant's.
    pub per_namespace: usize,
}

/// A due delivery claimed by this replica.
pub struct Claimed {
    pub delivery: Delivery,
    /// The claim's end, by this process's clock (measured from before the
    /// claim was asked for, so never later than the database's).
    pub until: std::time::Instant,
}

/// The store: a connection pool and the group committer.
pub struct Postgres {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    groups: mpsc::Sender<Group>,
    records: mpsc::Sender<PendingRecord>,
}

/// What the receivers of the group committers take.
struct Committers {
    groups: mpsc::Receiver<Group>,
    records: mpsc::Receiver<PendingRecord>,
}

/// An attempt's record waiting for the record committer: its row is
/// written if it still has version `seen` and is claimed by `claimant`.
struct PendingRecord {
    namespace: String,
    name: String,
    doc: String,
    phase: String,
    due: Option<Timestamp>,
    completed: Option<Timestamp>,
    seen: i64,
    claimant: String,
    /// The new version and the ordering key; `None` when the fence failed.
    done: oneshot::Sender<Result<Option<Recorded>, String>>,
}

/// A written record: the row's new version and its ordering key.
type Recorded = (i64, Option<String>);

/// TLS towards the database, used when the URL says `sslmode=require`:
/// the server's certificate and name are verified (as libpq's
/// `verify-full`) against `ca` (PEM) or else the public roots. Any other
/// `sslmode` connects in plain TCP.
fn tls(config: &mut tokio_postgres::Config, ca: Option<&[u8]>) -> anyhow::Result<MakeRustlsConnect> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    if config.get_ssl_mode() != SslMode::Require {
        config.ssl_mode(SslMode::Disable);
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| anyhow::anyhow!("--postgres-ca-file: not a PEM certificate bundle: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("--postgres-ca-file: a certificate is not usable: {e}"))?;
            }
            anyhow::ensure!(!roots.is_empty(), "--postgres-ca-file holds no certificate");
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(client))
}

/// Errors, without the connection string (it may hold a password).
fn describe(e: impl std::error::Error) -> String {
    // tokio-postgres says only "db error"; what the server said is the source.
    let mut text = format!("postgres: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

impl Postgres {
    /// Connects and migrates the schema, retrying until the database
    /// answers, and starts the group committer (controller, ingest, console).
    /// `ca`: the PEM bundle that signs the server's certificate (with
    /// `sslmode=require`).
    pub async fn connect(url: &str, ca: Option<&[u8]>) -> anyhow::Result<Arc<Postgres>> {
        let (store, committers) = Self::pool(url, ca)?;
        let mut delay = Duration::from_millis(200);
        loop {
            match store.migrate().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "postgres store not reachable yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        let groups = Arc::new(tokio::sync::Mutex::new(committers.groups));
        let records = Arc::new(tokio::sync::Mutex::new(committers.records));
        for _ in 0..COMMITTERS {
            tokio::spawn(commit_groups(store.pool.clone(), groups.clone()));
            tokio::spawn(commit_records(store.pool.clone(), records.clone()));
        }
        Ok(store)
    }

    /// A reader of the store as it is (the kubectl plugin): no migration,
    /// nothing inserted.
    pub fn open(url: &str, ca: Option<&[u8]>) -> anyhow::Result<Arc<Postgres>> {
        Ok(Self::pool(url, ca)?.0)
    }

    fn pool(url: &str, ca: Option<&[u8]>) -> anyhow::Result<(Arc<Postgres>, Committers)> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| anyhow::anyhow!("--postgres-url is not a Postgres connection URL: {e}"))?;
        let tls = tls(&mut config, ca)?;
        // Server-side too: a statement the client gave up on (`timed`) must
        // not go on holding locks (a slow claim, the claim lock).
        let ms = STATEMENT_TIMEOUT.as_millis();
        let options = format!(
            "{} -c statement_timeout={ms} -c lock_timeout={ms}",
            config.get_options().unwrap_or_default()
        );
        config.options(options.trim());
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(STATEMENT_TIMEOUT))
            .create_timeout(Some(STATEMENT_TIMEOUT))
            .build()?;
        let (groups, group_receiver) = mpsc::channel(4096);
        let (records, record_receiver) = mpsc::channel(4096);
        Ok((
            Arc::new(Postgres {
                pool,
                config,
                tls,
                groups,
                records,
            }),
            Committers {
                groups: group_receiver,
                records: record_receiver,
            },
        ))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, String> {
        self.pool.get().await.map_err(describe)
    }

    async fn migrate(&self) -> Result<(), String> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(describe)?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0;
             SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
             CREATE TABLE IF NOT EXISTS hookrelay_schema (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());"
        ))
        .await
        .map_err(describe)?;
        let applied: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM hookrelay_schema", &[])
            .await
            .map_err(describe)?
            .get(0);
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
            tx.batch_execute(sql).await.map_err(describe)?;
            tx.execute("INSERT INTO hookrelay_schema (version) VALUES ($1)", &[version])
                .await
                .map_err(describe)?;
            tracing::info!(version, "postgres store: schema migrated");
        }
        tx.commit().await.map_err(describe)
    }

    /// Stores an event's deliveries, built as they are taken, all or none;
    /// `Ok` once committed. A small event joins the group commit; a large
    /// one is stored alone a chunk at a time.
    pub async fn insert_event(&self, mut rows: Fanout<'_>) -> Result<(), String> {
        let first = take_chunk(&mut rows);
        match rows.next() {
            None => self.insert(first).await,
            Some(next) => {
                self.insert_large(first, Box::new(std::iter::once(next).chain(rows)))
                    .await
            }
        }
    }

    /// One event's deliveries in one transaction, `CHUNK_BYTES` of payload
    /// per statement. Its keys are not known before the end, so every
    /// key bucket is locked (in the one order commits use).
    async fn insert_large(&self, first: Vec<NewDelivery>, mut rest: Fanout<'_>) -> Result<(), String> {
        let mut client = self.client().await?;
        let tx = timed(client.transaction()).await?;
        let every_bucket: Vec<i64> = (KEY_LOCKS..KEY_LOCKS + KEY_BUCKETS).collect();
        let (lock, insert) = (
            timed(tx.prepare_cached(LOCK_EACH)).await?,
            timed(tx.prepare_cached(INSERT)).await?,
        );
        timed(lock_buckets(&tx, &lock, &every_bucket)).await?;
        let mut chunk = first;
        while !chunk.is_empty() {
            let columns = Columns::of(chunk.iter());
            timed(columns.insert(&tx, &insert)).await?;
            drop(columns);
            chunk = take_chunk(&mut rest);
        }
        let notify = timed(tx.prepare_cached(NOTIFY)).await?;
        timed(tx.execute(&notify, &[&CHANNEL])).await?;
        timed(tx.commit()).await
    }

    /// Stores an event's deliveries; `Ok` once committed. A delivery that
    /// exists already (a repeated event) counts as stored.
    pub async fn insert(&self, rows: Vec<NewDelivery>) -> Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        self.groups
            .send(Group { rows, done })
            .await
            .map_err(|_| "postgres store: shut down".to_string())?;
        answer
            .await
            .map_err(|_| "postgres store: commit abandoned".to_string())?
    }

    /// Claims up to `most` due deliveries (of `namespaces`, or all) for
    /// `claimant` for `lease`, within `limits` per webhook across all
    /// claimants, never one whose ordering key has an earlier unfinished
    /// delivery. Namespaces take turns: the one with fewest deliveries in
    /// flight goes first, and this claimant holds at most
    /// `limits.per_namespace` of one namespace's, so
    /// one tenant's backlog neither fills every slot nor goes before
    /// another tenant's newer event. Within a webhook the oldest due goes
    /// first. Each webhook's queue is read from its head only
    /// (`SCAN_DEPTH` rows past its limit), and deliveries waiting on an
    /// earlier one of their ordering key are not in it, so the claim's cost
    /// does not grow with any one webhook's backlog.
    pub async fn claim(
        &self,
        claimant: &str,
        most: usize,
        lease: Duration,
        namespaces: &[String],
        limits: &ClaimLimits<'_>,
    ) -> Result<Vec<Claimed>, String> {
        const CLAIM: &str = r#"
WITH RECURSIVE queues AS (
    -- every webhook with unfinished deliveries, one index probe each
    (SELECT namespace, webhook FROM hookrelay_deliveries
     WHERE due_at IS NOT NULL AND NOT waiting AND (cardinality($6::text[]) = 0 OR namespace = ANY($6))
     ORDER BY namespace, webhook LIMIT 1)
    UNION ALL
    SELECT n.namespace, n.webhook FROM queues q CROSS JOIN LATERAL (
        SELECT namespace, webhook FROM hookrelay_deliveries
        WHERE due_at IS NOT NULL AND NOT waiting AND (cardinality($6::text[]) = 0 OR namespace = ANY($6))
          AND (namespace, webhook) > (q.namespace, q.webhook)
        ORDER BY namespace, webhook LIMIT 1) n
), limits AS (
    SELECT * FROM unnest($3::text[], $4::text[], $5::int[]) AS l(namespace, webhook, most)
), alive AS (
    SELECT claimant FROM hookrelay_claimants WHERE alive_until > now()
), held AS (
    SELECT namespace, webhook, claimed_by FROM hookrelay_deliveries
    WHERE claimed_by IS NOT NULL AND due_at IS NOT NULL AND claim_until > now()
      AND claimed_by IN (SELECT claimant FROM alive)
), busy AS (
    SELECT namespace, webhook, count(*)::int AS n FROM held GROUP BY namespace, webhook
), tenants AS (
    SELECT namespace, count(*)::int AS n, (count(*) FILTER (WHERE claimed_by = $1))::int AS mine
    FROM held GROUP BY namespace
), candidates AS (
    SELECT c.namespace, c.name, c.due_at, c.seq FROM queues q
    LEFT JOIN busy b USING (namespace, webhook)
    LEFT JOIN limits l USING (namespace, webhook)
    CROSS JOIN LATERAL (
        SELECT h.namespace, h.name, h.due_at, h.seq FROM (
            SELECT d.namespace, d.webhook, d.name, d.due_at, d.seq, d.claimed_by, d.claim_until, d.ordering_key
            FROM hookrelay_deliveries d
            WHERE d.namespace = q.namespace AND d.webhook = q.webhook
              AND d.due_at IS NOT NULL AND NOT d.waiting AND d.due_at <= now()
            ORDER BY d.due_at, d.seq
            LIMIT coalesce(l.most, $7) + $10::bigint
        ) h
        WHERE (h.claim_until IS NULL OR h.claim_until <= now() OR h.claimed_by NOT IN (SELECT claimant FROM alive))
          -- first of its ordering key's unfinished deliveries (a min, so
          -- even a generic plan reads the index, not the table)
          AND (h.ordering_key IS NULL OR h.seq = (
              SELECT min(e.seq) FROM hookrelay_deliveries e
              WHERE e.namespace = h.namespace AND e.webhook = h.webhook AND e.ordering_key = h.ordering_key
                AND e.ordering_key IS NOT NULL AND e.due_at IS NOT NULL))
        ORDER BY h.due_at, h.seq
        LIMIT greatest(coalesce(l.most, $7) - coalesce(b.n, 0), 0)
    ) c
), ranked AS (
    SELECT c.namespace, c.name, c.due_at, c.seq,
           row_number() OVER (PARTITION BY c.namespace ORDER BY c.due_at, c.seq) AS r,
           coalesce(t.n, 0) AS held, coalesce(t.mine, 0) AS mine
    FROM candidates c LEFT JOIN tenants t USING (namespace)
), chosen AS (
    SELECT namespace, name FROM ranked
    WHERE mine + r <= $9
    ORDER BY held + r, due_at, seq
    LIMIT $2
)
UPDATE hookrelay_deliveries t SET claimed_by = $1, claim_until = now() + make_interval(secs => $8)
FROM chosen c
WHERE t.namespace = c.namespace AND t.name = c.name AND t.due_at <= now()
  AND (t.claim_until IS NULL OR t.claim_until <= now()
       OR NOT EXISTS (SELECT 1 FROM hookrelay_claimants a WHERE a.claimant = t.claimed_by AND a.alive_until > now()))
RETURNING t.doc, t.version, t.namespace, t.name"#;
        let started = std::time::Instant::now();
        let mut client = self.client().await?;
        let (ns, webhooks, most_each): (Vec<&str>, Vec<&str>, Vec<i32>) = limits
            .webhooks
            .iter()
            .map(|(n, w, m)| (n.as_str(), w.as_str(), *m))
            .collect();
        let (default_limit, namespace_share) = (limits.default, limits.per_namespace as i64);
        let mut buckets: Vec<i64> = namespaces.iter().map(|n| claim_lock(n)).collect();
        buckets.sort_unstable();
        buckets.dedup();
        let work = async {
            // Claims of the same namespaces are taken one at a time across
            // replicas: the claim's snapshot is taken after the lock, so it
            // sees every claim committed before it. Two concurrent snapshots
            // could each see the webhook idle and pick different rows, past
            // its limit.
            // The locks and the claim go out together (pipelined, one round
            // trip): the server runs the claim, and takes its snapshot, only
            // once the locks are held.
            let tx = client.transaction().await?;
            let lock = tx.prepare_cached(LOCK).await?;
            let (shared, each) = (
                tx.prepare_cached(LOCK_SHARED).await?,
                tx.prepare_cached(LOCK_EACH).await?,
            );
            let statement = tx.prepare_cached(CLAIM).await?;
            let locks = async {
                if buckets.is_empty() {
                    tx.execute(&lock, &[&CLAIM_LOCK]).await?;
                } else {
                    // The shared lock first, then the buckets in order: no
                    // two claims deadlock.
                    let of_buckets: [&(dyn ToSql + Sync); 1] = [&buckets];
                    tokio::try_join!(biased; tx.execute(&shared, &[&CLAIM_LOCK]), tx.execute(&each, &of_buckets))?;
                }
                Ok::<_, tokio_postgres::Error>(())
            };
            let (most, lease) = (most as i64, lease.as_secs_f64());
            let params: [&(dyn ToSql + Sync); 10] = [
                &claimant,
                &most,
                &ns,
                &webhooks,
                &most_each,
                &namespaces,
                &default_limit,
                &lease,
                &namespace_share,
                &SCAN_DEPTH,
            ];
            let ((), rows) = tokio::try_join!(biased; locks, tx.query(&statement, &params))?;
            tx.commit().await?;
            Ok(rows)
        };
        let rows = timed(work).await?;
        let until = started + lease;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            match decode(row.get(0), row.get(1)) {
                Ok(delivery) => claimed.push(Claimed { delivery, until }),
                // One row that does not decode must not hold up the others.
                Err(e) => self.set_aside(row.get(2), row.get(3), &e).await,
            }
        }
        Ok(claimed)
    }

    /// Takes a delivery that does not decode out of the queue for good
    /// (failed, never due), saying so: no attempt could ever be made of it.
    async fn set_aside(&self, namespace: &str, name: &str, why: &str) {
        tracing::error!(
            namespace,
            delivery = name,
            error = why,
            "a stored delivery does not decode; set aside as failed"
        );
        let set_aside = async {
            let client = self.client().await?;
            timed(client.execute(
                "UPDATE hookrelay_deliveries SET due_at = NULL, claimed_by = NULL, phase = 'Failed', completed_at = now()
                 WHERE namespace = $1 AND name = $2",
                &[&namespace, &name],
            ))
            .await
        };
        if let Err(e) = set_aside.await {
            tracing::warn!(namespace, delivery = name, error = %e, "could not set aside an undecodable delivery");
        }
    }

    /// Says `claimant` is alive for `ttl` more (and forgets claimants
    /// silent for an hour).
    pub async fn heartbeat(&self, claimant: &str, ttl: Duration) -> Result<(), String> {
        const ALIVE: &str = "INSERT INTO hookrelay_claimants (claimant, alive_until)
             VALUES ($1, now() + make_interval(secs => $2))
             ON CONFLICT (claimant) DO UPDATE SET alive_until = excluded.alive_until";
        let client = self.client().await?;
        let statement = timed(client.prepare_cached(ALIVE)).await?;
        timed(client.execute(&statement, &[&claimant, &ttl.as_secs_f64()])).await?;
        Ok(())
    }

    /// Forgets claimants gone for an hour (each replica start is one).
    pub async fn forget_claimants(&self) -> Result<u64, String> {
        let client = self.client().await?;
        timed(client.execute(
            "DELETE FROM hookrelay_claimants WHERE alive_until < now() - interval '1 hour'",
            &[],
        ))
        .await
    }

    /// Deletes rate-limit turns an hour in the past: a turn in the past is
    /// the same as none (the next takes it from now), so this forgets only
    /// webhooks idle or gone (deleted webhooks leave their row behind).
    pub async fn forget_turns(&self) -> Result<u64, String> {
        let client = self.client().await?;
        timed(client.execute(
            "DELETE FROM hookrelay_turns WHERE tat < extract(epoch FROM now())::float8 - 3600",
            &[],
        ))
        .await
    }

    /// Records `delivery` as it now stands, if it still has the version it
    /// was read at and `claimant` still holds its claim (which ends). `None`:
    /// someone else wrote it first, or it is gone. Records that finish
    /// together are written in one statement and one commit (the record
    /// committer), each with its own fence and outcome.
    pub async fn record(&self, delivery: &Delivery, seen: i64, claimant: &str) -> Result<Option<Delivery>, String> {
        // The next of its ordering key, if it waits, is queued now.
        const NEXT: &str = "UPDATE hookrelay_deliveries SET waiting = false
            WHERE namespace = $1 AND webhook = $2 AND ordering_key = $3 AND due_at IS NOT NULL AND waiting
              AND seq = (SELECT min(seq) FROM hookrelay_deliveries
                         WHERE namespace = $1 AND webhook = $2 AND ordering_key = $3 AND due_at IS NOT NULL)";
        let status = delivery.status.clone().unwrap_or_default();
        let due = due_of(&status);
        let (done, answer) = oneshot::channel();
        let pending = PendingRecord {
            namespace: namespace_of(delivery),
            name: delivery.name_any(),
            doc: serde_json::to_string(&stored(delivery)).map_err(describe)?,
            phase: format!("{:?}", status.phase),
            due,
            completed: status.completed_at.as_ref().map(|t| t.0),
            seen,
            claimant: claimant.to_string(),
            done,
        };
        let ns = pending.namespace.clone();
        let written = match self.records.send(pending).await {
            Ok(()) => answer
                .await
                .map_err(|_| "postgres store: the record committer stopped".to_string())??,
            // No committer (a store opened only to read): written alone.
            Err(mpsc::error::SendError(pending)) => record_many(&self.pool, std::slice::from_ref(&pending))
                .await?
                .into_values()
                .next(),
        };
        let Some((version, key)) = written else { return Ok(None) };
        if let (Some(key), None) = (&key, due) {
            // Under the key's lock, after this record's commit: a delivery
            // stored meanwhile either saw this one finished or is seen
            // waiting here. (Should this process stop in between, the
            // safety net queues it within a minute.)
            let webhook = &delivery.spec.webhook;
            let queued = async {
                let mut client = self.client().await?;
                let work = async {
                    let tx = client.transaction().await?;
                    let (lock, next) = (tx.prepare_cached(LOCK).await?, tx.prepare_cached(NEXT).await?);
                    // Pipelined: the update runs once the lock is held.
                    let bucket = key_lock(&ns, webhook, key);
                    let (bucket, of_key): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 3]) =
                        ([&bucket], [&ns, webhook, key]);
                    let (_, queued) = tokio::try_join!(biased; tx.execute(&lock, &bucket), tx.execute(&next, &of_key))?;
                    if queued > 0 {
                        let notify = tx.prepare_cached(NOTIFY).await?;
                        tx.execute(&notify, &[&CHANNEL]).await?;
                    }
                    tx.commit().await
                };
                timed(work).await
            };
            if let Err(e) = queued.await {
                tracing::warn!(error = %e, "ordering key: the next delivery is queued by the safety net instead");
            }
        }
        let mut recorded = delivery.clone();
        recorded.metadata.resource_version = Some(version.to_string());
        Ok(Some(recorded))
    }

    /// The delivery as stored, if it exists.
    pub async fn read(&self, namespace: &str, name: &str) -> Result<Option<Delivery>, String> {
        let client = self.client().await?;
        let row = timed(client.query_opt(
            "SELECT doc, version FROM hookrelay_deliveries WHERE namespace = $1 AND name = $2",
            &[&namespace, &name],
        ))
        .await?;
        row.map(|row| decode(row.get(0), row.get(1))).transpose()
    }

    /// Deliveries by (namespace, name) in one query, in the order asked,
    /// leaving out those not there.
    pub async fn read_many(&self, names: &[(String, String)]) -> Result<Vec<Delivery>, String> {
        let (namespaces, names): (Vec<&str>, Vec<&str>) = names.iter().map(|(ns, n)| (ns.as_str(), n.as_str())).unzip();
        let client = self.client().await?;
        let rows = timed(client.query(
            "SELECT d.doc, d.version
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS asked(namespace, name, position)
             JOIN hookrelay_deliveries d USING (namespace, name)
             ORDER BY asked.position",
            &[&namespaces, &names],
        ))
        .await?;
        rows.iter().map(|row| decode(row.get(0), row.get(1))).collect()
    }

    /// Unfinished deliveries in `namespaces` (all when empty).
    pub async fn pending(&self, namespaces: &[String]) -> Result<i64, String> {
        let client = self.client().await?;
        let row = timed(client.query_one(
            // Two counts, each read from its index: queued, and waiting on
            // an ordering key.
            "SELECT (SELECT count(*) FROM hookrelay_deliveries
                     WHERE due_at IS NOT NULL AND NOT waiting AND (cardinality($1::text[]) = 0 OR namespace = ANY($1)))
                  + (SELECT count(*) FROM hookrelay_deliveries
                     WHERE due_at IS NOT NULL AND ordering_key IS NOT NULL AND waiting
                       AND (cardinality($1::text[]) = 0 OR namespace = ANY($1)))",
            &[&namespaces],
        ))
        .await?;
        Ok(row.get(0))
    }

    /// Refreshes the planner's statistics of the deliveries table once many
    /// rows changed since they were taken (returns whether it did). Until
    /// autovacuum comes round (a minute or more), a burst of 100,000 rows
    /// left claims reading the whole table for the few claimed rows: 20 ms
    /// each instead of 0.6.
    pub async fn analyze_if_stale(&self) -> Result<bool, String> {
        let client = self.client().await?;
        let changed: i64 = timed(client.query_one(
            "SELECT coalesce((SELECT n_mod_since_analyze FROM pg_stat_user_tables
                              WHERE relid = 'hookrelay_deliveries'::regclass), 0)",
            &[],
        ))
        .await?
        .get(0);
        if changed < ANALYZE_AFTER {
            return Ok(false);
        }
        timed(client.batch_execute("ANALYZE hookrelay_deliveries")).await?;
        Ok(true)
    }

    /// Queues every waiting delivery that is the first unfinished one of
    /// its ordering key. Finishing a delivery does this for the next one;
    /// this is the safety net, should one ever be missed. Returns how many.
    pub async fn queue_firsts(&self, namespaces: &[String]) -> Result<u64, String> {
        let client = self.client().await?;
        timed(client.execute(
            "UPDATE hookrelay_deliveries t SET waiting = false
             FROM (SELECT DISTINCT ON (namespace, webhook, ordering_key) namespace, name, waiting
                   FROM hookrelay_deliveries
                   WHERE due_at IS NOT NULL AND ordering_key IS NOT NULL
                     AND (cardinality($1::text[]) = 0 OR namespace = ANY($1))
                   ORDER BY namespace, webhook, ordering_key, seq) f
             WHERE f.waiting AND t.namespace = f.namespace AND t.name = f.name",
            &[&namespaces],
        ))
        .await
    }

    /// A webhook's newest deliveries (accept order), at most `most`, in
    /// one of `phases` (any when empty).
    pub async fn recent(
        &self,
        namespace: Option<&str>,
        webhook: Option<&str>,
        phases: &[Phase],
        most: i64,
    ) -> Result<Vec<Delivery>, String> {
        let phases: Vec<String> = phases.iter().map(|p| format!("{p:?}")).collect();
        let client = self.client().await?;
        let query = match (namespace, webhook) {
            // One webhook: its newest, from the index.
            (Some(_), Some(_)) => {
                "SELECT doc, version FROM hookrelay_deliveries WHERE namespace = $1 AND webhook = $2
                   AND (cardinality($4::text[]) = 0 OR phase = ANY($4))
                 ORDER BY seq DESC LIMIT $3"
            }
            // Every webhook (of a namespace, or of all): each one's newest.
            _ => {
                "SELECT doc, version FROM (
                   SELECT doc, version, row_number() OVER (PARTITION BY namespace, webhook ORDER BY seq DESC) AS newest
                   FROM hookrelay_deliveries
                   WHERE ($1::text IS NULL OR namespace = $1) AND ($2::text IS NULL OR webhook = $2)
                     AND (cardinality($4::text[]) = 0 OR phase = ANY($4))
                 ) ranked WHERE newest <= $3"
            }
        };
        let rows = timed(client.query(query, &[&namespace, &webhook, &most, &phases])).await?;
        rows.iter().map(|row| decode(row.get(0), row.get(1))).collect()
    }

    /// Deliveries (of `namespace`, or of all; of `webhook`, or of every one)
    /// accepted before `before` (a `seq`), newest first, at most `most`;
    /// each with its `seq`.
    pub async fn page(
        &self,
        namespace: Option<&str>,
        webhook: Option<&str>,
        before: Option<i64>,
        most: i64,
    ) -> Result<Vec<(Delivery, i64)>, String> {
        let client = self.client().await?;
        let rows = timed(client.query(
            "SELECT doc, version, seq FROM hookrelay_deliveries
             WHERE ($1::text IS NULL OR namespace = $1) AND ($2::text IS NULL OR webhook = $2)
               AND ($3::bigint IS NULL OR seq < $3)
             ORDER BY seq DESC LIMIT $4",
            &[&namespace, &webhook, &before, &most],
        ))
        .await?;
        rows.iter()
            .map(|row| Ok((decode(row.get(0), row.get(1))?, row.get(2))))
            .collect()
    }

    /// Where changes stand now: the database's current snapshot (as
    /// `pg_snapshot` text).
    pub async fn position(&self) -> Result<String, String> {
        let client = self.client().await?;
        let row = timed(client.query_one("SELECT pg_current_snapshot()::text", &[])).await?;
        Ok(row.get(0))
    }

    /// The rows (of `namespace`, or of all) written by transactions the
    /// snapshot `since` did not see, oldest write first, at most `most`;
    /// and the snapshot they were read in. One repeatable-read transaction,
    /// so nothing committed in between is missed or reported twice.
    pub async fn changed_since(
        &self,
        namespace: Option<&str>,
        since: &str,
        most: i64,
    ) -> Result<(Vec<(String, String)>, String), String> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(describe)?;
        let now: String = timed(tx.query_one("SELECT pg_current_snapshot()::text", &[]))
            .await?
            .get(0);
        let rows = timed(tx.query(
            "SELECT namespace, name FROM hookrelay_deliveries
             WHERE changed >= pg_snapshot_xmin($1::text::pg_snapshot)
               AND NOT pg_visible_in_snapshot(changed, $1::text::pg_snapshot)
               AND ($2::text IS NULL OR namespace = $2)
             ORDER BY changed LIMIT $3",
            &[&since, &namespace, &most],
        ))
        .await?;
        tx.commit().await.map_err(describe)?;
        Ok((rows.iter().map(|r| (r.get(0), r.get(1))).collect(), now))
    }

    /// Asks for a new round of attempts (the `hookrelay.dev/redeliver`
    /// annotation, as on a Delivery object) and makes it due now. Refused
    /// (`Ok(false)`) while an attempt is under way: its record must not be
    /// overwritten.
    pub async fn redeliver(&self, namespace: &str, name: &str, request: &str) -> Result<bool, String> {
        let client = self.client().await?;
        let changed = timed(client.execute(
            "UPDATE hookrelay_deliveries
             SET doc = jsonb_set(doc::jsonb, '{metadata,annotations}',
                     coalesce(doc::jsonb #> '{metadata,annotations}', '{}'::jsonb) || jsonb_build_object($3::text, $4::text))::text,
                 version = version + 1, due_at = now(), completed_at = NULL, changed = pg_current_xact_id()
             WHERE namespace = $1 AND name = $2 AND (claim_until IS NULL OR claim_until <= now())",
            &[&namespace, &name, &crate::resources::delivery::REDELIVER_ANNOTATION, &request],
        ))
        .await?;
        if changed == 1 {
            let _ = client.execute(NOTIFY, &[&CHANNEL]).await;
        }
        Ok(changed == 1)
    }

    /// Gives a claim back without an attempt, due again no sooner than
    /// `after` (`None`: in its place, as due as it was).
    pub async fn release(
        &self,
        namespace: &str,
        name: &str,
        claimant: &str,
        after: Option<Duration>,
    ) -> Result<(), String> {
        let client = self.client().await?;
        let after = after.map(|a| a.as_secs_f64());
        timed(client.execute(
            "UPDATE hookrelay_deliveries
             SET claimed_by = NULL, claim_until = NULL,
                 due_at = CASE WHEN $4::float8 IS NULL THEN due_at ELSE greatest(due_at, now() + make_interval(secs => $4)) END
             WHERE namespace = $1 AND name = $2 AND claimed_by = $3 AND due_at IS NOT NULL",
            &[&namespace, &name, &claimant, &after],
        ))
        .await
        .map(drop)
    }

    /// Makes every unfinished delivery of a webhook due now (a deactivated
    /// webhook's deliveries are then cancelled at once, not at their retry).
    pub async fn hasten(&self, namespace: &str, webhook: &str) -> Result<u64, String> {
        let client = self.client().await?;
        timed(client.execute(
            "UPDATE hookrelay_deliveries SET due_at = now() WHERE namespace = $1 AND webhook = $2 AND due_at > now()",
            &[&namespace, &webhook],
        ))
        .await
    }

    /// Deletes finished deliveries past their webhook's retention: beyond the
    /// newest `keep`, or finished longer ago than `max_age`.
    pub async fn sweep(
        &self,
        namespaces: &[String],
        policies: &[(String, String, super::retention::Policy)],
        default: super::retention::Policy,
    ) -> Result<u64, String> {
        const SWEEP: &str = r#"
WITH policy AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::float8[]) AS p(namespace, webhook, keep, max_age)
), finished AS (
    SELECT d.namespace, d.name, d.webhook, d.completed_at,
           row_number() OVER (PARTITION BY d.namespace, d.webhook ORDER BY d.completed_at DESC, d.name DESC) AS r
    FROM hookrelay_deliveries d
    WHERE d.due_at IS NULL AND (cardinality($7::text[]) = 0 OR d.namespace = ANY($7))
)
DELETE FROM hookrelay_deliveries t
USING finished f LEFT JOIN policy p USING (namespace, webhook)
WHERE t.namespace = f.namespace AND t.name = f.name AND t.due_at IS NULL
  AND (f.r > coalesce(p.keep, $5) OR f.completed_at < now() - make_interval(secs => coalesce(p.max_age, $6)))"#;
        let (mut ns, mut webhooks, mut keep, mut age) = (vec![], vec![], vec![], vec![]);
        for (n, w, p) in policies {
            ns.push(n.as_str());
            webhooks.push(w.as_str());
            keep.push(p.keep as i64);
            age.push(p.max_age.as_secs_f64());
        }
        let mut client = self.client().await?;
        let work = async {
            // One replica sweeps at a time (the others skip this round):
            // concurrent deletes of the same rows would only contend.
            let tx = client.transaction().await?;
            let mine: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&SWEEP_LOCK])
                .await?
                .get(0);
            if !mine {
                return Ok(0);
            }
            let deleted = tx
                .execute(
                    SWEEP,
                    &[
                        &ns,
                        &webhooks,
                        &keep,
                        &age,
                        &(default.keep as i64),
                        &default.max_age.as_secs_f64(),
                        &namespaces,
                    ],
                )
                .await?;
            tx.commit().await?;
            Ok(deleted)
        };
        timed(work).await
    }

    /// A `Notify` woken whenever ingest commits deliveries, kept listening
    /// across connection losses (claims also run on a timer without it).
    pub fn listen(self: &Arc<Self>) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        let (config, tls, wake) = (self.config.clone(), self.tls.clone(), notify.clone());
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            // Until nobody waits on it any more (an engine that ended).
            while Arc::strong_count(&wake) > 1 {
                if let Err(e) = listen_once(&config, &tls, &wake).await {
                    tracing::debug!(error = %e, "postgres store: notifications interrupted; reconnecting");
                }
                // Whatever was committed while not listening is claimed now.
                wake.notify_one();
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        });
        notify
    }
}

/// Listens on one connection until it ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    wake: &Arc<Notify>,
) -> Result<(), String> {
    let (client, mut connection) = config.connect(tls.clone()).await.map_err(describe)?;
    let forward = {
        let wake = wake.clone();
        async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(e) => return describe(e),
                }
            }
            "postgres: connection closed".to_string()
        }
    };
    let driver = tokio::spawn(forward);
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(describe)?;
    let ended = driver.await.map_err(describe)?;
    Err(ended)
}

/// Records written by one statement at most, and (past the first) the
/// document bytes they may hold: one tenant's large deliveries make a
/// batch shorter, not a statement every other tenant's records wait on.
const RECORD_ROWS: usize = 256;
const RECORD_BYTES: usize = CHUNK_BYTES;

/// Writes records as they come: one statement (and so one commit) for
/// every record that arrived while the previous one was being written.
async fn commit_records(pool: Pool, receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<PendingRecord>>>) {
    // Records of a delivery already in the batch wait for the next one: an
    // UPDATE … FROM writes a row once, whatever else it joins.
    let mut held: Vec<PendingRecord> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut held);
        {
            let mut receiver = receiver.lock().await;
            if batch.is_empty() {
                let Some(first) = receiver.recv().await else { return };
                batch.push(first);
            }
            let mut bytes: usize = batch.iter().map(|r| r.doc.len()).sum();
            while batch.len() < RECORD_ROWS && bytes < RECORD_BYTES {
                let Ok(next) = receiver.try_recv() else { break };
                bytes += next.doc.len();
                batch.push(next);
            }
        }
        let mut names = std::collections::HashSet::new();
        let (batch, later): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|r| names.insert((r.namespace.clone(), r.name.clone())));
        held = later;
        match record_many(&pool, &batch).await {
            Ok(mut written) => {
                for record in batch {
                    let outcome = written.remove(&(record.namespace, record.name));
                    let _ = record.done.send(Ok(outcome));
                }
            }
            // One record's trouble must not fail another's: each alone.
            // Not when the store did not answer in time: that is everyone's
            // trouble, and retrying a batch one by one would hold the
            // committer for a timeout per record (the attempts then count
            // as unrecorded, as one record's timeout always did).
            Err(e) if batch.len() > 1 && e != no_answer() => {
                for record in batch {
                    let alone = record_many(&pool, std::slice::from_ref(&record)).await;
                    let _ = record.done.send(alone.map(|w| w.into_values().next()));
                }
            }
            Err(e) => {
                for record in batch {
                    let _ = record.done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Writes `records` in one statement, each fenced by its version and
/// claimant; the rows written, by (namespace, name). A record whose fence
/// failed is not among them.
async fn record_many(
    pool: &Pool,
    records: &[PendingRecord],
) -> Result<std::collections::HashMap<(String, String), Recorded>, String> {
    const RECORD: &str = "UPDATE hookrelay_deliveries d
        SET doc = r.doc, version = d.version + 1, phase = r.phase, due_at = r.due_at,
            completed_at = r.completed_at, claimed_by = NULL, claim_until = NULL, changed = pg_current_xact_id()
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[],
                    $7::int8[], $8::text[])
             AS r(namespace, name, doc, phase, due_at, completed_at, seen, claimant)
        WHERE d.namespace = r.namespace AND d.name = r.name AND d.version = r.seen AND d.claimed_by = r.claimant
        RETURNING d.namespace, d.name, d.version, d.ordering_key";
    let column = |f: fn(&PendingRecord) -> &str| records.iter().map(f).collect::<Vec<&str>>();
    let (namespaces, names) = (column(|r| &r.namespace), column(|r| &r.name));
    let (docs, phases, claimants) = (column(|r| &r.doc), column(|r| &r.phase), column(|r| &r.claimant));
    let due: Vec<Option<Timestamp>> = records.iter().map(|r| r.due).collect();
    let completed: Vec<Option<Timestamp>> = records.iter().map(|r| r.completed).collect();
    let seen: Vec<i64> = records.iter().map(|r| r.seen).collect();
    let client = pool.get().await.map_err(describe)?;
    let statement = client.prepare_cached(RECORD).await.map_err(describe)?;
    let rows = timed(client.query(
        &statement,
        &[&namespaces, &names, &docs, &phases, &due, &completed, &seen, &claimants],
    ))
    .await?;
    Ok(rows
        .iter()
        .map(|row| ((row.get(0), row.get(1)), (row.get(2), row.get(3))))
        .collect())
}

/// Commits groups as they come: one transaction for everything that
/// arrived while the previous commit was under way.
async fn commit_groups(pool: Pool, receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<Group>>>) {
    loop {
        let mut groups = Vec::new();
        {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else { return };
            let mut rows = first.rows.len();
            groups.push(first);
            while rows < GROUP_ROWS {
                let Ok(next) = receiver.try_recv() else { break };
                rows += next.rows.len();
                groups.push(next);
            }
        }
        // An event whose sender stopped waiting (ingest answered 408) is
        // not committed: its sender was told it was not accepted.
        groups.retain(|g| !g.done.is_closed());
        let mut result = commit(&pool, &groups).await;
        if result.as_ref().is_err_and(|e| e == WAITER_GONE) {
            groups.retain(|g| !g.done.is_closed());
            result = commit(&pool, &groups).await;
        }
        if result.is_err() && groups.len() > 1 {
            // One event's rows must not fail another's (another tenant's,
            // perhaps): each is committed alone, and only its own fails.
            for group in groups {
                let alone = commit(&pool, std::slice::from_ref(&group)).await;
                let _ = group.done.send(alone);
            }
            continue;
        }
        for group in groups {
            let _ = group.done.send(result.clone());
        }
    }
}

/// Inserts rows given one array per column (one statement for many rows).
/// A delivery whose ordering key has an earlier unfinished one (stored
/// before, or earlier in these rows) waits out of the queue.
const INSERT: &str = "
WITH new AS (
    SELECT n, m, w, h, k, d, o FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
        WITH ORDINALITY AS t(n, m, w, h, k, d, o)
    -- (rows stored already are not counted as earlier ones below)
    WHERE t.k IS NULL OR NOT EXISTS (SELECT 1 FROM hookrelay_deliveries x WHERE x.namespace = t.n AND x.name = t.m)
)
INSERT INTO hookrelay_deliveries (namespace, name, webhook, hub, ordering_key, doc, due_at, waiting)
SELECT n, m, w, h, k, d, now(),
       k IS NOT NULL AND (
           row_number() OVER (PARTITION BY n, w, k ORDER BY o) > 1
           OR EXISTS (SELECT 1 FROM hookrelay_deliveries e
                      WHERE e.namespace = new.n AND e.webhook = new.w AND e.ordering_key = new.k
                        AND e.due_at IS NOT NULL))
FROM new
ORDER BY o
ON CONFLICT (namespace, name) DO NOTHING";

/// Rows as `INSERT`'s column arrays.
#[derive(Default)]
struct Columns<'a> {
    namespaces: Vec<String>,
    names: Vec<String>,
    webhooks: Vec<&'a str>,
    hubs: Vec<&'a str>,
    keys: Vec<Option<String>>,
    docs: Vec<String>,
}

impl<'a> Columns<'a> {
    fn of(rows: impl Iterator<Item = &'a NewDelivery>) -> Self {
        let mut c = Columns::default();
        for row in rows {
            let d = &row.delivery;
            c.namespaces.push(namespace_of(d));
            c.names.push(d.name_any());
            c.webhooks.push(&d.spec.webhook);
            c.hubs.push(&d.spec.hub);
            c.keys.push(row.ordering_key.as_deref().map(key_digest));
            c.docs
                .push(serde_json::to_string(&stored(d)).expect("a Delivery serialises"));
        }
        c
    }

    /// The ordering keys' locks, in one order (no two commits deadlock).
    fn key_locks(&self) -> Vec<i64> {
        let mut buckets: Vec<i64> = (0..self.names.len())
            .filter_map(|i| {
                Some(key_lock(
                    &self.namespaces[i],
                    self.webhooks[i],
                    self.keys[i].as_deref()?,
                ))
            })
            .collect();
        buckets.sort_unstable();
        buckets.dedup();
        buckets
    }

    /// Inserts the rows with `statement` (`INSERT`, prepared).
    async fn insert(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        statement: &tokio_postgres::Statement,
    ) -> Result<u64, tokio_postgres::Error> {
        tx.execute(
            statement,
            &[
                &self.namespaces,
                &self.names,
                &self.webhooks,
                &self.hubs,
                &self.keys,
                &self.docs,
            ],
        )
        .await
    }
}

/// Takes advisory locks in array order (a function scan, no sort) with
/// `lock` (`LOCK_EACH`, prepared).
async fn lock_buckets(
    tx: &deadpool_postgres::Transaction<'_>,
    lock: &tokio_postgres::Statement,
    buckets: &[i64],
) -> Result<(), tokio_postgres::Error> {
    if !buckets.is_empty() {
        tx.execute(lock, &[&buckets]).await?;
    }
    Ok(())
}

async fn commit(pool: &Pool, groups: &[Group]) -> Result<(), String> {
    if groups.is_empty() {
        return Ok(());
    }
    let c = Columns::of(groups.iter().flat_map(|g| &g.rows));
    let buckets = c.key_locks();
    let mut client = pool.get().await.map_err(describe)?;
    let work = async {
        let tx = client.transaction().await?;
        let (lock, insert) = (tx.prepare_cached(LOCK_EACH).await?, tx.prepare_cached(INSERT).await?);
        let notify = tx.prepare_cached(NOTIFY).await?;
        // Pipelined (one round trip): every statement is prepared, so each
        // is sent when it is first polled, and a biased join polls them in
        // this order, which is the order the server runs them: the keys'
        // locks, the rows, the notification.
        tokio::try_join!(biased;
            lock_buckets(&tx, &lock, &buckets),
            c.insert(&tx, &insert),
            tx.execute(&notify, &[&CHANNEL])
        )?;
        if groups.iter().any(|g| g.done.is_closed()) {
            // Rolled back (the transaction is dropped): committed without
            // those, or not at all.
            return Ok(false);
        }
        tx.commit().await.map(|()| true)
    };
    match timed(work).await? {
        true => Ok(()),
        false => Err(WAITER_GONE.to_string()),
    }
}

/// Takes deliveries from `rows` until about `CHUNK_BYTES` of payload (or
/// `GROUP_ROWS` rows) are held.
fn take_chunk(rows: &mut dyn Iterator<Item = NewDelivery>) -> Vec<NewDelivery> {
    let (mut chunk, mut bytes) = (Vec::new(), 0);
    while bytes < CHUNK_BYTES && chunk.len() < GROUP_ROWS {
        let Some(row) = rows.next() else { break };
        bytes += row.delivery.spec.payload.len();
        chunk.push(row);
    }
    chunk
}

/// A commit given up before COMMIT because an event's sender stopped waiting.
const WAITER_GONE: &str = "postgres store: an event's sender stopped waiting";

/// The advisory lock of an ordering key's bucket (`key` as stored).
fn key_lock(namespace: &str, webhook: &str, key: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(namespace)
        .chain_update([0])
        .chain_update(webhook)
        .chain_update([0])
        .chain_update(key)
        .finalize();
    KEY_LOCKS + i64::from(digest[0]) % KEY_BUCKETS
}

/// The advisory lock a claim of `namespace` holds (its bucket's).
pub fn claim_lock(namespace: &str) -> i64 {
    use sha2::{Digest, Sha256};
    CLAIM_LOCKS + i64::from(Sha256::digest(namespace)[0]) % CLAIM_BUCKETS
}

/// What is stored of an ordering key: its SHA-256, so a key of any length
/// or content (a NUL, 100 KB from a payload) fits the index and the text
/// type, and equal keys stay equal.
fn key_digest(key: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A statement bounded by `STATEMENT_TIMEOUT`.
async fn timed<T>(work: impl Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T, String> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, work).await {
        Ok(result) => result.map_err(describe),
        Err(_) => Err(no_answer()),
    }
}

/// What `timed` says of a statement that took longer than `STATEMENT_TIMEOUT`.
fn no_answer() -> String {
    format!("postgres: no answer within {STATEMENT_TIMEOUT:?}")
}

/// When a delivery with `status` is next due: `None` once finished.
fn due_of(status: &crate::resources::delivery::DeliveryStatus) -> Option<Timestamp> {
    match status.phase {
        p if p.is_finished() => None,
        Phase::Retrying => Some(
            status
                .next_attempt_at
                .as_ref()
                .map(|t| t.0)
                .unwrap_or_else(Timestamp::now),
        ),
        _ => Some(Timestamp::now()),
    }
}

fn namespace_of(delivery: &Delivery) -> String {
    delivery.namespace().unwrap_or_default()
}

/// The document kept of a delivery: without resourceVersion (the row's
/// `version` is that) and managedFields.
fn stored(delivery: &Delivery) -> Delivery {
    let mut d = delivery.clone();
    d.metadata.resource_version = None;
    d.metadata.managed_fields = None;
    d
}

fn decode(doc: &str, version: i64) -> Result<Delivery, String> {
    let mut delivery: Delivery =
        serde_json::from_str(doc).map_err(|e| format!("postgres: a stored delivery does not decode: {e}"))?;
    delivery.metadata.resource_version = Some(version.to_string());
    Ok(delivery)
}

/// The version a delivery read from this store was read at.
pub fn version_of(delivery: &Delivery) -> Option<i64> {
    delivery.metadata.resource_version.as_deref()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::delivery::DeliveryStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    #[test]
    fn every_table_a_migration_creates_is_in_tables() {
        let listed: Vec<&str> = TABLES.split(", ").collect();
        let created = MIGRATIONS
            .iter()
            .flat_map(|(_, sql)| sql.split("CREATE TABLE ").skip(1))
            .map(|rest| rest.split_whitespace().next().unwrap());
        for table in created {
            assert!(listed.contains(&table), "{table} is missing from TABLES");
        }
        assert!(listed.contains(&"hookrelay_schema"), "the migrations' own table");
    }

    #[test]
    fn finished_deliveries_are_never_due_and_retries_at_their_time() {
        for phase in [Phase::Succeeded, Phase::Failed, Phase::Cancelled] {
            let status = DeliveryStatus {
                phase,
                ..Default::default()
            };
            assert_eq!(due_of(&status), None);
        }
        let at: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let retrying = DeliveryStatus {
            phase: Phase::Retrying,
            next_attempt_at: Some(MicroTime(at)),
            ..Default::default()
        };
        assert_eq!(due_of(&retrying), Some(at));
        assert!(due_of(&DeliveryStatus::default()).is_some_and(|t| t <= Timestamp::now()));
    }

    #[test]
    fn ordering_keys_are_stored_as_fixed_length_digests() {
        let long = "x".repeat(100_000);
        assert_eq!(key_digest(&long).len(), 64);
        assert_eq!(key_digest("a\0b"), key_digest("a\0b"));
        assert_ne!(key_digest("a"), key_digest("b"));
        assert!(!key_digest("a\0b").contains('\0'));
    }

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, (version, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, i as i32 + 1);
        }
    }

    #[test]
    fn the_version_is_the_resource_version() {
        let mut d = decode(r#"{"apiVersion":"hookrelay.dev/v1alpha1","kind":"Delivery","metadata":{"name":"d","namespace":"n"},"spec":{"webhook":"w","hub":"h","event":{"id":"e","name":"x","receivedAt":"2030-01-01T00:00:00.000000Z"},"payload":"{}"}}"#, 7).unwrap();
        assert_eq!(version_of(&d), Some(7));
        d.metadata.managed_fields = Some(vec![]);
        let kept = stored(&d);
        assert_eq!(kept.metadata.resource_version, None);
        assert_eq!(kept.metadata.managed_fields, None);
    }
}
