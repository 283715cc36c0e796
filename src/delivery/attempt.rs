//! One attempt of one delivery: resolve the webhook's settings and secrets,
//! send, and record the result with a single status write.

use super::Engine;
use super::http::{ClientKey, Limits};
use super::request::{self, DEFAULT_SIGNATURE_HEADER, Outgoing, ResolvedHeader, SigningKeys};
use super::retry::{self, Next, Schedule};
use crate::egress;
use crate::resources::delivery::{Attempt, Delivery, DeliveryStatus, Phase, REDELIVER_ANNOTATION, RecordedRequest};
use crate::resources::webhook::{Deactivation, DeliverySummary};
use crate::resources::{Hub, Webhook};
use crate::secrets;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use std::time::{Duration, Instant};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_BODY_LIMIT: usize = 4096;

/// A webhook's delivery settings, with the hub's and built-in defaults applied.
pub struct Settings {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub body_limit: usize,
    pub signature_header: String,
    pub schedule: Schedule,
    pub egress: egress::Policy,
}

impl Settings {
    pub fn resolve(webhook: &Webhook, hub: Option<&Hub>) -> Self {
        let hub_spec = hub.map(|h| &h.spec);
        let delivery = hub_spec.and_then(|h| h.delivery.as_ref());
        Self {
            timeout: delivery
                .and_then(|d| d.timeout)
                .map(Into::into)
                .unwrap_or(DEFAULT_TIMEOUT),
            connect_timeout: delivery
                .and_then(|d| d.connect_timeout)
                .map(Into::into)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            body_limit: delivery
                .and_then(|d| d.response_body_limit)
                .map(|l| l as usize)
                .unwrap_or(DEFAULT_BODY_LIMIT),
            signature_header: hub_spec
                .and_then(|h| h.signing.as_ref())
                .and_then(|s| s.header.clone())
                .unwrap_or_else(|| DEFAULT_SIGNATURE_HEADER.to_string()),
            schedule: Schedule::resolve(webhook.spec.retry.as_ref(), hub_spec.and_then(|h| h.retry.as_ref())),
            egress: egress::Policy::from_spec(hub_spec.and_then(|h| h.egress.as_ref())),
        }
    }
}

/// What an attempt did, for the engine.
pub enum Done {
    /// The attempt was recorded; this is the Delivery as stored, and the
    /// deactivation its outcome calls for, if any.
    Recorded(Box<Delivery>, Option<Deactivation>),
    /// Nothing to do: the Delivery is gone.
    Gone,
}

/// Reasons the controller deactivates a webhook.
pub const RETRIES_EXHAUSTED: &str = "RetriesExhausted";
pub const GONE: &str = "Gone";

/// The redelivery request on a Delivery not yet acted on, if any.
pub fn redelivery_request(delivery: &Delivery) -> Option<&str> {
    let requested = delivery.annotations().get(REDELIVER_ANNOTATION)?;
    let handled = delivery.status.as_ref().and_then(|s| s.redelivered_for.as_deref());
    (handled != Some(requested.as_str())).then_some(requested.as_str())
}

/// Why an attempt could not be recorded (it will be made again).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("recording the attempt: {0}")]
    Kube(#[from] kube::Error),
}

/// Makes one attempt of `delivery` and records it.
pub async fn run(engine: &Engine, delivery: &Delivery) -> Result<Done, Error> {
    let ns = delivery.namespace().unwrap_or_default();
    let name = delivery.name_any();
    let mut status = delivery.status.clone().unwrap_or_default();
    if let Some(request) = redelivery_request(delivery) {
        // A manual redelivery: a new round of attempts under the same id,
        // recorded after the earlier ones.
        status.redelivered_for = Some(request.to_string());
        status.round_start = Some(status.attempt_count + 1);
        status.phase = Phase::Pending;
        status.completed_at = None;
        status.message = None;
    }
    let webhook = engine.webhooks.get(&ObjectRef::new(&delivery.spec.webhook).within(&ns));

    let webhook = match webhook {
        Some(w) => match engine.inactive_reason(&w) {
            None => w,
            Some(why) => return cancel(engine, delivery, &ns, &name, status, why).await,
        },
        None => return cancel(engine, delivery, &ns, &name, status, "the webhook was deleted".into()).await,
    };
    let hub = engine.hubs.get(&ObjectRef::new(&webhook.spec.hub).within(&ns));
    let settings = Settings::resolve(&webhook, hub.as_deref());

    let started_at = Timestamp::now();
    let clock = Instant::now();
    let prepared = prepare(engine, delivery, &webhook, &settings, &ns, started_at).await;
    let (recorded_request, result) = match prepared {
        Ok(outgoing) => {
            let client = engine.http.get(&ClientKey {
                connect_timeout: settings.connect_timeout,
                egress: settings.egress.clone(),
            });
            let limits = Limits {
                timeout: settings.timeout,
                body_limit: settings.body_limit,
            };
            let result = super::http::send(&client, &settings.egress, &outgoing, &limits).await;
            (record_of(&outgoing), result)
        }
        Err(reason) => (
            RecordedRequest {
                method: webhook.spec.method.as_str().into(),
                url: webhook.spec.url.clone(),
                headers: vec![],
            },
            Err(format!("not sent: {reason}")),
        ),
    };
    let duration = clock.elapsed();

    if status.attempts.is_empty() {
        let received = delivery.spec.event.received_at.0;
        let wait = started_at.duration_since(received).as_secs_f64().max(0.0);
        engine.metrics.event_to_first_attempt.observe(wait);
    }
    let number = status.attempt_count + 1;
    let (response, error, retry_after) = match result {
        Ok((response, retry_after)) => (Some(response), None, retry_after),
        Err(e) => (None, Some(e), None),
    };
    let status_code = response.as_ref().map(|r| r.status_code);
    engine.metrics.attempt(attempt_result(status_code, error.as_deref()));
    tracing::info!(
        delivery = %name, namespace = %ns, webhook = %webhook.name_any(), attempt = number,
        status = status_code, error = error.as_deref(), duration_ms = duration.as_millis() as u64,
        "attempt"
    );
    status.attempts.push(Attempt {
        number,
        time: MicroTime(started_at),
        duration_ms: duration.as_millis() as u64,
        request: recorded_request,
        response,
        error,
    });
    status.attempt_count = number;
    status.last_status_code = status_code;

    let now = Timestamp::now();
    let round_start = status.round_start.unwrap_or(1);
    let mut deactivation = None;
    let mut fail = |status: &mut DeliveryStatus, reason: &str, message: String| {
        status.phase = Phase::Failed;
        status.next_attempt_at = None;
        status.completed_at = Some(MicroTime(now));
        status.message = Some(message.clone());
        deactivation = Some(Deactivation {
            reason: reason.into(),
            message,
            delivery: name.clone(),
        });
    };
    match status_code {
        Some(200..=299) => {
            status.phase = Phase::Succeeded;
            status.next_attempt_at = None;
            status.completed_at = Some(MicroTime(now));
            status.message = None;
        }
        // REST Hooks: 410 Gone means the subscription is to be removed.
        Some(410) => fail(
            &mut status,
            GONE,
            format!("delivery {name}: the handler answered 410 Gone; the webhook is deactivated"),
        ),
        _ => {
            let round_started = status
                .attempts
                .get(round_start as usize - 1)
                .map(|a| a.time.0)
                .unwrap_or(started_at);
            let elapsed = Duration::try_from(now.duration_since(round_started)).unwrap_or_default();
            let honoured = retry_after.filter(|_| matches!(status_code, Some(429 | 503)));
            let in_round = number + 1 - round_start;
            match retry::next(&settings.schedule, in_round, elapsed, honoured, rand::random::<f64>()) {
                Next::RetryIn(delay) => {
                    status.phase = Phase::Retrying;
                    status.next_attempt_at = Some(MicroTime(now + delay));
                    status.message = None;
                }
                Next::GiveUp => fail(
                    &mut status,
                    RETRIES_EXHAUSTED,
                    format!(
                        "delivery {name} failed after {in_round} attempts ({} retries within {}s allowed); the webhook is deactivated",
                        settings.schedule.max_retries,
                        settings.schedule.window.as_secs()
                    ),
                ),
            }
        }
    }
    let summary = DeliverySummary {
        id: name.clone(),
        event: delivery.spec.event.name.clone(),
        time: MicroTime(started_at),
        attempts: number,
        status_code,
        outcome: status.phase,
    };
    let done = record(engine, delivery, &ns, &name, status, Some(summary)).await?;
    Ok(match done {
        Done::Recorded(stored, _) => Done::Recorded(stored, deactivation),
        Done::Gone => Done::Gone,
    })
}

/// Records that the delivery was not sent because its webhook is inactive.
async fn cancel(
    engine: &Engine,
    delivery: &Delivery,
    ns: &str,
    name: &str,
    mut status: DeliveryStatus,
    why: String,
) -> Result<Done, Error> {
    status.phase = Phase::Cancelled;
    status.completed_at = Some(MicroTime(Timestamp::now()));
    status.next_attempt_at = None;
    status.message = Some(format!("not sent: {why}"));
    let summary = DeliverySummary {
        id: name.to_string(),
        event: delivery.spec.event.name.clone(),
        time: MicroTime(Timestamp::now()),
        attempts: status.attempt_count,
        status_code: status.last_status_code,
        outcome: Phase::Cancelled,
    };
    record(engine, delivery, ns, name, status, Some(summary)).await
}

/// The single status write of an attempt.
async fn record(
    engine: &Engine,
    delivery: &Delivery,
    ns: &str,
    name: &str,
    status: DeliveryStatus,
    summary: Option<DeliverySummary>,
) -> Result<Done, Error> {
    let api: Api<Delivery> = Api::namespaced(engine.client.clone(), ns);
    let patch = serde_json::json!({ "status": status });
    let stored = match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(d) => d,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Done::Gone),
        Err(e) => return Err(e.into()),
    };
    let finished = status.phase.is_finished();
    if finished {
        engine
            .metrics
            .delivery_finished(&format!("{:?}", status.phase).to_lowercase());
    }
    if let Some(summary) = summary {
        engine.summaries.record(ns, &delivery.spec.webhook, summary, finished);
    }
    Ok(Done::Recorded(Box::new(stored), None))
}

/// A label for the attempts metric.
fn attempt_result(status: Option<u16>, error: Option<&str>) -> &'static str {
    match (status, error) {
        (Some(c), _) if (200..300).contains(&c) => "success",
        (Some(_), _) => "http_error",
        (None, Some(e)) if e.starts_with("not sent") => "not_sent",
        (None, Some(e)) if e.contains("egress denied") => "denied",
        (None, Some(e)) if e.contains("timed out") => "timeout",
        _ => "connection_error",
    }
}

fn record_of(outgoing: &Outgoing) -> RecordedRequest {
    RecordedRequest {
        method: outgoing.method.to_string(),
        url: outgoing.url.clone(),
        headers: outgoing.recorded_headers.clone(),
    }
}

/// Everything before sending: secrets, headers, body. `Err` says, without
/// any secret value, why the request cannot be built.
async fn prepare(
    engine: &Engine,
    delivery: &Delivery,
    webhook: &Webhook,
    settings: &Settings,
    ns: &str,
    now: Timestamp,
) -> Result<Outgoing, String> {
    let secret_ref = webhook
        .spec
        .secret_ref
        .clone()
        .or_else(|| webhook.status.as_ref().and_then(|s| s.secret_ref.clone()))
        .ok_or("the webhook has no signing secret yet")?;
    let secret = engine
        .secrets
        .get(ns, &secret_ref.name)
        .await
        .map_err(|e| format!("reading Secret {}: {e}", secret_ref.name))?
        .ok_or_else(|| format!("signing Secret {} not found", secret_ref.name))?;
    let current = secrets::value(&secret, &secret_ref.key).ok_or_else(|| {
        format!(
            "signing Secret {} has no non-empty key {}",
            secret_ref.name, secret_ref.key
        )
    })?;
    // During a rotation overlap the previous value signs too.
    let previous = secrets::previous_expires_at(&secret)
        .filter(|expires| *expires > now)
        .and_then(|_| secrets::value(&secret, secrets::PREVIOUS_KEY));

    let mut custom = Vec::with_capacity(webhook.spec.headers.len());
    for header in &webhook.spec.headers {
        let resolved = match (&header.value, &header.value_from) {
            (Some(v), _) => ResolvedHeader {
                name: header.name.clone(),
                value: v.clone(),
                secret: false,
            },
            (None, Some(from)) => {
                let r = &from.secret_key_ref;
                let s = engine
                    .secrets
                    .get(ns, &r.name)
                    .await
                    .map_err(|e| format!("reading Secret {}: {e}", r.name))?
                    .ok_or_else(|| format!("header {}: Secret {} not found", header.name, r.name))?;
                let value = secrets::value(&s, &r.key).ok_or_else(|| {
                    format!(
                        "header {}: Secret {} has no non-empty key {}",
                        header.name, r.name, r.key
                    )
                })?;
                ResolvedHeader {
                    name: header.name.clone(),
                    value: value.to_string(),
                    secret: true,
                }
            }
            (None, None) => continue,
        };
        custom.push(resolved);
    }
    let body = request::body(delivery, webhook.spec.custom_payload.as_deref()).map_err(|e| e.to_string())?;
    let keys = SigningKeys {
        header: &settings.signature_header,
        current,
        previous,
    };
    Ok(request::build(
        &delivery.name_any(),
        webhook.spec.method.as_str(),
        &webhook.spec.url,
        body,
        &keys,
        &custom,
        now.as_second(),
    ))
}
