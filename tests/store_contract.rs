//! The store contract: what ingest, the console, the plugin and the delivery
//! engine rely on of a store (`Deliveries`, `Queue`), run against all three
//! stores. The memory store needs nothing; Kubernetes runs on the local
//! control plane, Postgres on the shared test database.

mod support;

use hookrelay::resources::delivery::{Delivery, DeliverySpec, DeliveryStatus, EventRef, Phase, REDELIVER_ANNOTATION};
use hookrelay::resources::webhook::{Ordering, WebhookSpec};
use hookrelay::resources::{WEBHOOK_LABEL, Webhook};
use hookrelay::store::memory::Memory;
use hookrelay::store::postgres::{ClaimLimits, Postgres, claim_lock};
use hookrelay::store::{
    Deliveries, Due, Limits, Loaded, NewDelivery, Queue, Records, Scope, Settled, Store, StoreError, Written,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::ResourceExt;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// One store under test, as its users see it.
struct Subject {
    deliveries: Arc<dyn Deliveries>,
    records: Arc<dyn Records>,
    /// The engine's schedule of the test's namespace.
    queue: Arc<dyn Queue>,
    namespace: String,
    /// Postgres: deliveries are recorded by whoever claimed them.
    postgres: Option<Arc<Postgres>>,
}

const CLAIMANT: &str = "contract-test";

impl Subject {
    fn memory() -> Subject {
        let memory = Arc::new(Memory::default());
        Subject {
            queue: memory.clone(),
            deliveries: memory.clone(),
            records: memory,
            namespace: "contract".into(),
            postgres: None,
        }
    }

    async fn kubernetes(test: &str) -> Subject {
        let env = support::TestEnv::new(test).await;
        let objects = Arc::new(hookrelay::store::kubernetes::Objects::new(env.client.clone()));
        Subject {
            queue: Store::Kubernetes.queue(scope(&env.client, &env.ns)),
            deliveries: objects.clone(),
            records: objects,
            namespace: env.ns.clone(),
            postgres: None,
        }
    }

    async fn postgres(test: &str) -> Subject {
        let url = support::postgres::Postgres::shared().url.clone();
        let db = Postgres::connect(&url, None).await.expect("the test database");
        // Rows of earlier runs stay: a fresh namespace per run.
        let namespace = format!("{test}-{}", uuid::Uuid::new_v4().simple());
        let client = support::TestEnv::new("contract_postgres_client").await.client;
        Subject {
            queue: Store::Postgres(db.clone()).queue(scope(&client, &namespace)),
            deliveries: db.clone(),
            records: db.clone(),
            namespace,
            postgres: Some(db),
        }
    }

    /// A delivery of the ordered webhook `o`, keyed "k".
    fn keyed(&self, name: &str) -> NewDelivery {
        let mut new = self.delivery(name, "o");
        new.ordering_key = Some("k".into());
        new
    }

    fn delivery(&self, name: &str, webhook: &str) -> NewDelivery {
        let mut d = Delivery::new(
            name,
            DeliverySpec {
                webhook: webhook.into(),
                hub: "main".into(),
                event: EventRef {
                    id: format!("event-{name}"),
                    name: "contract.tested".into(),
                    received_at: MicroTime(Timestamp::now()),
                    trace: None,
                },
                payload: r#"{"n":1,"id":"k"}"#.into(),
            },
        );
        d.metadata.namespace = Some(self.namespace.clone());
        d.labels_mut().insert(WEBHOOK_LABEL.into(), webhook.into());
        NewDelivery {
            delivery: d,
            ordering_key: None,
        }
    }

    async fn insert(&self, rows: Vec<NewDelivery>) -> Result<(), StoreError> {
        self.deliveries
            .insert(&self.namespace, Box::new(rows.into_iter()), false)
            .await
    }

    /// The delivery as the engine holds it when it attempts it.
    async fn due(&self, name: &str) -> Delivery {
        let Some(db) = &self.postgres else {
            return self
                .deliveries
                .get(&self.namespace, name)
                .await
                .unwrap()
                .expect("stored");
        };
        claim_all(db, &self.namespace)
            .await
            .into_iter()
            .find(|d| d.name_any() == name)
            .expect("claimed")
    }
}

/// Claims (as `CLAIMANT`) every due delivery of `namespace`, up to 100.
async fn claim_all(db: &Postgres, namespace: &str) -> Vec<Delivery> {
    let limits = ClaimLimits {
        webhooks: &[],
        default: 100,
        per_namespace: 100,
    };
    let claimed = db
        .claim(
            CLAIMANT,
            100,
            Duration::from_secs(60),
            std::slice::from_ref(&namespace.to_string()),
            &limits,
        )
        .await
        .expect("a claim");
    claimed.into_iter().map(|c| c.delivery).collect()
}

/// A schedule's scope: no hubs known (the defaults apply), one webhook,
/// `o`, that orders its deliveries by `$.payload.id`.
fn scope(client: &kube::Client, namespace: &str) -> Scope {
    let (webhooks, mut writer) = kube::runtime::reflector::store::<Webhook>();
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(ordered(namespace)));
    Scope {
        client: client.clone(),
        namespace: Some(namespace.to_string()),
        webhooks,
        hubs: kube::runtime::reflector::store().0,
        metrics: hookrelay::metrics::Metrics::new(),
    }
}

/// The webhook `o`, ordered by `$.payload.id`.
fn ordered(namespace: &str) -> Webhook {
    let mut spec = WebhookSpec::new("main", "o", "http://127.0.0.1:9/o", &["contract.tested"]);
    spec.ordering = Some(Ordering {
        key: "$.payload.id".into(),
    });
    let mut w = Webhook::new("o", spec);
    w.metadata.namespace = Some(namespace.into());
    w
}

/// The next due deliveries the schedule hands out, within a deadline.
async fn next(s: &Subject) -> Vec<Due> {
    let limits = Limits {
        webhooks: vec![],
        default: 100,
        per_namespace: 100,
    };
    let next = s.queue.next(CLAIMANT, 100, Duration::from_secs(60), &limits);
    tokio::time::timeout(Duration::from_secs(30), next)
        .await
        .expect("something due within 30 s")
        .expect("the schedule answers")
}

/// Waits until the schedule hands out `name`, settling anything else as not sent.
async fn handed_out(s: &Subject, name: &str) -> (Due, Delivery) {
    loop {
        for due in next(s).await {
            if due.name != name {
                s.queue.settle(&due, CLAIMANT, Settled::NotSent).await;
                continue;
            }
            let delivery = match &due.delivery {
                Some(d) => (**d).clone(),
                None => match s.queue.load(&due).await.unwrap() {
                    Loaded::Due(d) => d,
                    other => panic!("a due delivery loads as due: {other:?}"),
                },
            };
            return (due, delivery);
        }
    }
}

fn attempted(count: u32, phase: Phase) -> DeliveryStatus {
    DeliveryStatus {
        phase,
        attempt_count: count,
        last_status_code: Some(500),
        ..Default::default()
    }
}

async fn an_insert_is_idempotent_and_what_is_stored_can_be_read(s: Subject) {
    s.insert(vec![s.delivery("a-1", "a"), s.delivery("b-1", "b")])
        .await
        .unwrap();
    // The same event again (a sender's retry): stored already, no error.
    s.insert(vec![s.delivery("a-1", "a"), s.delivery("b-1", "b")])
        .await
        .unwrap();
    let a = s.deliveries.get(&s.namespace, "a-1").await.unwrap().expect("stored");
    assert_eq!((a.spec.webhook.as_str(), a.spec.event.id.as_str()), ("a", "event-a-1"));
    assert!(a.resource_version().is_some(), "read with a version");
    assert!(s.deliveries.get(&s.namespace, "missing").await.unwrap().is_none());
    let listed = s.deliveries.list(Some(&s.namespace), Some("a"), &[], 10).await.unwrap();
    let names: Vec<String> = listed.iter().map(|d| d.name_any()).collect();
    assert_eq!(names, vec!["a-1"], "once, and only webhook a's");
    // Every webhook of the namespace (the history API lists so).
    let listed = s.deliveries.list(Some(&s.namespace), None, &[], 10).await.unwrap();
    let mut names: Vec<String> = listed.iter().map(|d| d.name_any()).collect();
    names.sort();
    assert_eq!(names, vec!["a-1", "b-1"], "each webhook's");
}

async fn a_list_has_the_newest_of_a_webhook_in_the_phases_asked_for(s: Subject) {
    for n in 1..=3 {
        s.insert(vec![s.delivery(&format!("c-{n}"), "c")]).await.unwrap();
    }
    let listed = s.deliveries.list(Some(&s.namespace), Some("c"), &[], 2).await.unwrap();
    let names: Vec<String> = listed.iter().map(|d| d.name_any()).collect();
    assert!(
        names.contains(&"c-3".into()) && names.contains(&"c-2".into()),
        "{names:?}"
    );
    let finished = s
        .deliveries
        .list(Some(&s.namespace), Some("c"), &[Phase::Succeeded], 10)
        .await
        .unwrap();
    assert!(finished.is_empty(), "none has succeeded: {finished:?}");
    let pending = s
        .deliveries
        .list(Some(&s.namespace), Some("c"), &[Phase::Pending], 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 3);
}

async fn a_list_comes_a_page_at_a_time_newest_first_each_once(s: Subject) {
    for n in 1..=5 {
        s.insert(vec![s.delivery(&format!("p-{n}"), "p")]).await.unwrap();
    }
    s.insert(vec![s.delivery("q-1", "q")]).await.unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .deliveries
            .page(Some(&s.namespace), Some("p"), after.as_deref(), 2)
            .await
            .unwrap();
        assert!(page.deliveries.len() <= 2, "{page:?}");
        seen.extend(page.deliveries.iter().map(|d| d.name_any()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["p-5", "p-4", "p-3", "p-2", "p-1"],
        "newest first, each once, only webhook p's"
    );
    let bad = s
        .deliveries
        .page(Some(&s.namespace), None, Some("not-a-token"), 2)
        .await;
    assert!(matches!(bad, Err(StoreError::Expired(_))), "{bad:?}");
}

async fn a_record_stands_only_on_the_state_it_was_made_from(s: Subject) {
    s.insert(vec![s.delivery("r-1", "r")]).await.unwrap();
    let read = s.due("r-1").await;
    let first = match s.records.record(&read, &attempted(1, Phase::Retrying), CLAIMANT).await {
        Ok(Written::Stored(d)) => d,
        other => panic!("the first record must be stored: {other:?}"),
    };
    assert_eq!(first.status.as_ref().unwrap().attempt_count, 1);
    let stored = s.deliveries.get(&s.namespace, "r-1").await.unwrap().unwrap();
    assert_eq!(stored.status.as_ref().unwrap().phase, Phase::Retrying);
    // A second writer that read the delivery before the first record (a
    // deposed leader, a replica whose claim was taken over) is refused and
    // shown what stands.
    match s.records.record(&read, &attempted(1, Phase::Failed), CLAIMANT).await {
        Ok(Written::Superseded(current)) => {
            let status = current.status.unwrap();
            assert_eq!((status.attempt_count, status.phase), (1, Phase::Retrying));
        }
        other => panic!("a record made from a stale read must not stand: {other:?}"),
    }
    let stored = s.deliveries.get(&s.namespace, "r-1").await.unwrap().unwrap();
    assert_eq!(stored.status.unwrap().phase, Phase::Retrying, "the first record stands");
}

async fn a_redelivery_is_stamped_and_a_missing_delivery_is_not_found(s: Subject) {
    s.insert(vec![s.delivery("d-1", "d")]).await.unwrap();
    s.deliveries
        .redeliver(&s.namespace, "d-1", "2026-12-03T00:00:00Z")
        .await
        .unwrap();
    let stamped = s.deliveries.get(&s.namespace, "d-1").await.unwrap().unwrap();
    assert_eq!(
        stamped.annotations().get(REDELIVER_ANNOTATION).map(String::as_str),
        Some("2026-12-03T00:00:00Z")
    );
    match s.deliveries.redeliver(&s.namespace, "missing", "x").await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("redelivering a missing delivery: {other:?}"),
    }
}

async fn a_due_delivery_is_handed_out_and_a_deferred_one_again(s: Subject) {
    s.insert(vec![s.delivery("q-1", "q")]).await.unwrap();
    let (due, delivery) = handed_out(&s, "q-1").await;
    assert_eq!((due.webhook.as_str(), due.early), ("q", false));
    assert_eq!(delivery.spec.event.id, "event-q-1");
    // Nothing was sent (say, the webhook could not be read): due again shortly.
    s.queue.settle(&due, CLAIMANT, Settled::Deferred).await;
    let (again, _) = handed_out(&s, "q-1").await;
    let recorded = match s
        .records
        .record(&delivery, &attempted(1, Phase::Succeeded), CLAIMANT)
        .await
    {
        Ok(Written::Stored(d)) => d,
        other => panic!("the record of a handed-out delivery is stored: {other:?}"),
    };
    s.queue.settle(&again, CLAIMANT, Settled::Recorded(recorded)).await;
}

async fn hastening_a_webhook_brings_its_retries_forward(s: Subject) {
    s.insert(vec![s.delivery("h-1", "h")]).await.unwrap();
    let (due, delivery) = handed_out(&s, "h-1").await;
    let mut retrying = attempted(1, Phase::Retrying);
    retrying.next_attempt_at = Some(MicroTime(Timestamp::now() + jiff::SignedDuration::from_hours(1)));
    let recorded = match s.records.record(&delivery, &retrying, CLAIMANT).await {
        Ok(Written::Stored(d)) => d,
        other => panic!("stored: {other:?}"),
    };
    s.queue.settle(&due, CLAIMANT, Settled::Recorded(recorded)).await;
    // Due in an hour, until its webhook is deactivated.
    s.queue.hasten(&s.namespace, "h").await;
    let (_, again) = handed_out(&s, "h-1").await;
    assert_eq!(again.status.unwrap().attempt_count, 1, "the retry, brought forward");
}

async fn a_delivery_waits_while_an_earlier_one_of_its_key_is_unfinished(s: Subject) {
    s.insert(vec![s.keyed("k-1")]).await.unwrap();
    s.insert(vec![s.keyed("k-2")]).await.unwrap();
    let (due, delivery) = handed_out(&s, "k-1").await;
    // While k-1 is out, k-2 is not handed out (it would be at once).
    let limits = Limits {
        webhooks: vec![],
        default: 100,
        per_namespace: 100,
    };
    let meanwhile = tokio::time::timeout(
        Duration::from_secs(2),
        s.queue.next(CLAIMANT, 100, Duration::from_secs(60), &limits),
    )
    .await;
    if let Ok(Ok(batch)) = &meanwhile {
        let names: Vec<&str> = batch.iter().map(|d| d.name.as_str()).collect();
        assert!(!names.contains(&"k-2"), "k-2 handed out before k-1 finished: {names:?}");
    }
    let recorded = match s
        .records
        .record(&delivery, &attempted(1, Phase::Succeeded), CLAIMANT)
        .await
    {
        Ok(Written::Stored(d)) => d,
        other => panic!("stored: {other:?}"),
    };
    s.queue.settle(&due, CLAIMANT, Settled::Recorded(recorded)).await;
    handed_out(&s, "k-2").await;
}

/// `mod NAME { memory, kubernetes, postgres }`: the contract `NAME(subject)`
/// against each store.
macro_rules! every_store {
    ($($test:ident),* $(,)?) => { $(
        mod $test {
            #[tokio::test]
            async fn memory() {
                super::$test(super::Subject::memory()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kubernetes() {
                super::$test(super::Subject::kubernetes(stringify!($test)).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$test(super::Subject::postgres("contract").await).await
            }
        }
    )* };
}

every_store!(
    an_insert_is_idempotent_and_what_is_stored_can_be_read,
    a_list_has_the_newest_of_a_webhook_in_the_phases_asked_for,
    a_list_comes_a_page_at_a_time_newest_first_each_once,
    a_record_stands_only_on_the_state_it_was_made_from,
    a_redelivery_is_stamped_and_a_missing_delivery_is_not_found,
    a_due_delivery_is_handed_out_and_a_deferred_one_again,
    hastening_a_webhook_brings_its_retries_forward,
    a_delivery_waits_while_an_earlier_one_of_its_key_is_unfinished,
);

/// Watches of the history API follow a Postgres store from a position: each
/// write after it is reported once, whatever order transactions commit in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reports_each_write_after_a_position_once() {
    let s = Subject::postgres("changes").await;
    let start = s.deliveries.position().await.unwrap().expect("Postgres has positions");
    s.insert(vec![s.delivery("w-1", "w"), s.delivery("w-2", "w")])
        .await
        .unwrap();
    let (changed, next) = s.deliveries.changed_since(Some(&s.namespace), &start).await.unwrap();
    let names: HashSet<String> = changed.into_iter().map(|(_, name)| name).collect();
    assert_eq!(names, HashSet::from(["w-1".to_string(), "w-2".to_string()]));
    let (none, same) = s.deliveries.changed_since(Some(&s.namespace), &next).await.unwrap();
    assert!(none.is_empty(), "nothing written since: {none:?}");
    s.deliveries.redeliver(&s.namespace, "w-1", "now").await.unwrap();
    let (changed, _) = s.deliveries.changed_since(Some(&s.namespace), &same).await.unwrap();
    assert_eq!(changed, vec![(s.namespace.clone(), "w-1".to_string())]);
    // Another namespace's watch is told nothing of these.
    let (elsewhere, _) = s.deliveries.changed_since(Some("elsewhere"), &start).await.unwrap();
    assert!(elsewhere.is_empty(), "{elsewhere:?}");
    let bad = s.deliveries.changed_since(Some(&s.namespace), "1:2:x").await;
    assert!(matches!(bad, Err(StoreError::Expired(_))), "{bad:?}");
}

/// Records that finish together are written together (one statement), yet
/// each stands or falls by its own fence: a stale one among fresh ones is
/// Superseded alone, and the fresh ones are stored. Reading many at once
/// (a watch's batch) gives them back in the order asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_records_written_together_each_stand_by_their_own_fence() {
    let s = Subject::postgres("together").await;
    let names: Vec<String> = (0..40).map(|i| format!("t-{i:02}")).collect();
    s.insert(names.iter().map(|n| s.delivery(n, "t")).collect())
        .await
        .unwrap();
    let db = s.postgres.clone().unwrap();
    let mut read = claim_all(&db, &s.namespace).await;
    read.sort_by_key(|d| d.name_any());
    assert_eq!(read.len(), 40, "every delivery claimed");
    // Every third is recorded once first: its read is then stale.
    for d in read.iter().step_by(3) {
        let first = s.records.record(d, &attempted(1, Phase::Retrying), CLAIMANT).await;
        assert!(matches!(first, Ok(Written::Stored(_))), "{first:?}");
    }
    let succeeded = attempted(1, Phase::Succeeded);
    let outcomes = futures::future::join_all(read.iter().map(|d| s.records.record(d, &succeeded, CLAIMANT))).await;
    for (i, (d, outcome)) in read.iter().zip(outcomes).enumerate() {
        match (i % 3 == 0, outcome) {
            (true, Ok(Written::Superseded(current))) => {
                assert_eq!(current.status.unwrap().phase, Phase::Retrying, "{}", d.name_any())
            }
            (false, Ok(Written::Stored(stored))) => {
                assert_eq!(stored.status.unwrap().phase, Phase::Succeeded, "{}", d.name_any())
            }
            (stale, other) => panic!("{} (stale: {stale}): {other:?}", d.name_any()),
        }
    }
    let asked: Vec<(String, String)> = names.iter().rev().map(|n| (s.namespace.clone(), n.clone())).collect();
    let together = s.deliveries.get_many(&asked).await.unwrap();
    let order: Vec<String> = together.iter().map(|d| d.name_any()).collect();
    assert_eq!(
        order,
        names.iter().rev().cloned().collect::<Vec<_>>(),
        "in the order asked"
    );
    for (i, d) in together.iter().rev().enumerate() {
        let expected = if i % 3 == 0 { Phase::Retrying } else { Phase::Succeeded };
        assert_eq!(d.status.as_ref().unwrap().phase, expected, "{}", d.name_any());
    }
}

/// Claims of one namespace wait for another claim of that namespace (so
/// per-webhook limits hold across replicas), never for a claim of another
/// namespace: a controller watching its tenant's namespaces does not queue
/// behind another tenant's. The other claim is stood in for by its lock,
/// held by a connection of the test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_of_other_namespaces_do_not_wait_for_each_other() {
    let (a, b) = (Subject::postgres("lock-a").await, Subject::postgres("lock-b").await);
    let (a, b) = if claim_lock(&a.namespace) == claim_lock(&b.namespace) {
        // One bucket for both (1 in 64): another namespace for b.
        let mut other = Subject::postgres("lock-b").await;
        while claim_lock(&other.namespace) == claim_lock(&a.namespace) {
            other = Subject::postgres("lock-b").await;
        }
        (a, other)
    } else {
        (a, b)
    };
    a.insert(vec![a.delivery("a-1", "t")]).await.unwrap();
    b.insert(vec![b.delivery("b-1", "t")]).await.unwrap();
    let db = a.postgres.clone().unwrap();
    let holder = support::postgres::Postgres::shared().client().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .execute("SELECT pg_advisory_xact_lock($1)", &[&claim_lock(&a.namespace)])
        .await
        .unwrap();
    // Far longer than an unhindered claim takes, far shorter than the
    // statement timeout (10 s) a waiting one would run into.
    let other = tokio::time::timeout(Duration::from_secs(5), claim_all(&db, &b.namespace))
        .await
        .expect("a claim of another namespace did not wait for the lock");
    assert_eq!(other.len(), 1, "b's delivery claimed: {other:?}");
    let same = tokio::spawn({
        let (db, ns) = (db.clone(), a.namespace.clone());
        async move { claim_all(&db, &ns).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!same.is_finished(), "a claim of the same namespace waited for the lock");
    holder.batch_execute("COMMIT").await.unwrap();
    let same = tokio::time::timeout(Duration::from_secs(5), same)
        .await
        .expect("the waiting claim went on once the lock was released")
        .unwrap();
    assert_eq!(same.len(), 1, "a's delivery claimed: {same:?}");
}
