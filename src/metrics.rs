//! Prometheus metrics, served on `/metrics` by the controller and by ingest.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The log target of a debug line at each stage a delivery passes (seen by
/// the schedule, handed to the engine, slots granted):
/// `RUST_LOG=hookrelay::stages=debug` shows where a delivery's time goes.
pub const STAGES: &str = "hookrelay::stages";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

/// Every metric of hookrelay; each process registers and updates its own.
pub struct Metrics {
    pub registry: Registry,
    /// Finished deliveries by outcome (Succeeded, Failed, Cancelled).
    pub deliveries: Family<OutcomeLabel, Counter>,
    /// Attempts by result (success, http_error, timeout, connection_error, denied, not_sent).
    pub attempts: Family<ResultLabel, Counter>,
    /// Seconds from the event's acceptance to the first attempt's start.
    pub event_to_first_attempt: Histogram,
    /// Deliveries waiting for an attempt or in flight.
    pub pending: Gauge,
    /// Webhooks by state (active, inactive).
    pub webhooks: Family<StateLabel, Gauge>,
    /// Ingest requests by HTTP status code.
    pub ingest_requests: Family<CodeLabel, Counter>,
    /// Deliveries created by ingest.
    pub ingest_deliveries_created: Counter,
    /// Failed writes of an attempt's record, each retried as a write (the
    /// request is never sent again for it).
    pub record_retries: Counter,
    /// Requests sent whose outcome was not recorded, by reason (superseded:
    /// another leader recorded first; lost: leadership ended mid-request;
    /// refused: the API server refuses the record).
    pub unrecorded: Family<ReasonLabel, Counter>,
    /// Deliveries that cannot be decoded or whose status makes no sense,
    /// reported and skipped or clamped.
    pub invalid_deliveries: Counter,
    /// Webhooks the controller deactivated, by reason.
    pub deactivations: Family<ReasonLabel, Counter>,
    /// 1 while this controller leads (and delivers), else 0.
    pub leader: Gauge,
    /// Events refused with 429 because the store is saturated, by hub.
    pub ingest_backpressure: Family<HubLabel, Counter>,
    /// Ingest's recent store write latency, seconds (what backpressure acts on).
    pub ingest_write_latency: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while ingest counts the store as saturated.
    pub ingest_saturated: Gauge,
    /// Times a delivery waited for its webhook's rate limit, and how long.
    pub rate_limit_waits: Counter,
    pub rate_limit_wait_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HubLabel {
    pub namespace: String,
    pub hub: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("hookrelay");
        let deliveries = Family::<OutcomeLabel, Counter>::default();
        let attempts = Family::<ResultLabel, Counter>::default();
        let buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        let event_to_first_attempt = Histogram::new(buckets);
        let pending = Gauge::default();
        let webhooks = Family::<StateLabel, Gauge>::default();
        let ingest_requests = Family::<CodeLabel, Counter>::default();
        let ingest_deliveries_created = Counter::default();
        let record_retries = Counter::default();
        let unrecorded = Family::<ReasonLabel, Counter>::default();
        let invalid_deliveries = Counter::default();
        let deactivations = Family::<ReasonLabel, Counter>::default();
        let leader = Gauge::default();
        let ingest_backpressure = Family::<HubLabel, Counter>::default();
        let ingest_write_latency = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let ingest_saturated = Gauge::default();
        let rate_limit_waits = Counter::default();
        let rate_limit_wait_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "rate_limit_waits",
            "Times a delivery waited for its webhook's delivery.rateLimit (not attempts)",
            rate_limit_waits.clone(),
        );
        registry.register(
            "rate_limit_wait_seconds",
            "Time deliveries were told to wait for their webhook's delivery.rateLimit",
            rate_limit_wait_seconds.clone(),
        );
        registry.register(
            "ingest_backpressure_refusals",
            "Events refused with 429 because the delivery store is saturated, by hub",
            ingest_backpressure.clone(),
        );
        registry.register(
            "ingest_store_write_latency_seconds",
            "Ingest's recent delivery store write latency (averaged over the last writes)",
            ingest_write_latency.clone(),
        );
        registry.register(
            "ingest_store_saturated",
            "1 while ingest counts the delivery store as saturated and applies backpressure",
            ingest_saturated.clone(),
        );
        registry.register(
            "webhook_deactivations",
            "Webhooks the controller deactivated, by reason",
            deactivations.clone(),
        );
        registry.register("leader", "1 while this controller leads and delivers", leader.clone());
        registry.register(
            "attempt_record_retries",
            "Failed writes of an attempt's record, retried as writes",
            record_retries.clone(),
        );
        registry.register(
            "attempts_unrecorded",
            "Requests sent whose outcome was not recorded, by reason",
            unrecorded.clone(),
        );
        registry.register(
            "invalid_deliveries",
            "Deliveries that could not be decoded or had a nonsensical status",
            invalid_deliveries.clone(),
        );
        registry.register("deliveries", "Finished deliveries by outcome", deliveries.clone());
        registry.register("delivery_attempts", "Delivery attempts by result", attempts.clone());
        registry.register(
            "event_to_first_attempt_seconds",
            "Time from accepting an event to starting its first attempt",
            event_to_first_attempt.clone(),
        );
        registry.register(
            "deliveries_pending",
            "Deliveries waiting for an attempt or in flight",
            pending.clone(),
        );
        registry.register("webhooks", "Webhooks by state", webhooks.clone());
        registry.register(
            "ingest_requests",
            "Ingest requests by HTTP status",
            ingest_requests.clone(),
        );
        registry.register(
            "ingest_deliveries_created",
            "Deliveries created by ingest",
            ingest_deliveries_created.clone(),
        );
        // Known label values start at zero, so every family is exported
        // (alerts and panels find it) before its first event.
        for outcome in ["succeeded", "failed", "cancelled"] {
            let _ = deliveries.get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            });
        }
        for result in [
            "success",
            "http_error",
            "timeout",
            "connection_error",
            "denied",
            "not_sent",
        ] {
            let _ = attempts.get_or_create(&ResultLabel { result: result.into() });
        }
        for reason in ["superseded", "lost", "refused"] {
            let _ = unrecorded.get_or_create(&ReasonLabel { reason: reason.into() });
        }
        for reason in ["RetriesExhausted", "Gone"] {
            let _ = deactivations.get_or_create(&ReasonLabel { reason: reason.into() });
        }
        Arc::new(Self {
            registry,
            deliveries,
            attempts,
            event_to_first_attempt,
            pending,
            webhooks,
            ingest_requests,
            ingest_deliveries_created,
            record_retries,
            unrecorded,
            invalid_deliveries,
            deactivations,
            leader,
            ingest_backpressure,
            ingest_write_latency,
            ingest_saturated,
            rate_limit_waits,
            rate_limit_wait_seconds,
        })
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    pub fn unrecorded(&self, reason: &str) {
        self.unrecorded
            .get_or_create(&ReasonLabel { reason: reason.into() })
            .inc();
    }

    pub fn delivery_finished(&self, outcome: &str) {
        self.deliveries
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn attempt(&self, result: &str) {
        self.attempts
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }
}
