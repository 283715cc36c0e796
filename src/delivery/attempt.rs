//! One attempt of one delivery: resolve the webhook's settings and secrets,
//! send, and record the result with a single status write.

use super::Engine;
use super::auth::{self, Credentials};
use super::http::{ClientKey, Limits, SendError};
use super::outcome::{self, Answer, GONE, Round, Verdict};
use super::request::{self, DEFAULT_SIGNATURE_HEADER, Outgoing, ResolvedHeader, SigningKeys};
use super::retry::Schedule;
use super::signing;
use crate::egress;
use crate::resources::delivery::{Attempt, Delivery, DeliveryStatus, Phase, RecordedRequest};
use crate::resources::webhook::{CREDENTIAL_CONSENT_LABEL, Deactivation, DeliverySummary};
use crate::resources::{Hub, Webhook};
use crate::secrets;
use crate::store::{StoreError, Written};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::GetParams;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use std::sync::Arc;
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
    pub scheme: crate::resources::hub::SigningScheme,
    pub schedule: Schedule,
    pub egress: egress::Policy,
    /// Whether requests carry the event's trace context.
    pub trace_context: bool,
}

impl Settings {
    pub fn resolve(webhook: &Webhook, hub: Option<&Hub>, floor: &egress::Floor) -> Self {
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
            scheme: webhook.spec.signing_scheme(hub_spec),
            schedule: Schedule::resolve(webhook.spec.retry.as_ref(), hub_spec.and_then(|h| h.retry.as_ref())),
            egress: egress::Policy::from_spec(floor, hub_spec.and_then(|h| h.egress.as_ref())),
            trace_context: webhook.spec.trace_context(hub_spec),
        }
    }
}

/// What an attempt did, for the engine.
pub enum Outcome {
    /// The attempt was recorded; this is the Delivery as stored, and the
    /// deactivation its outcome calls for, if any.
    Recorded(Box<Delivery>, Option<Deactivation>),
    /// Someone else recorded progress on the Delivery first (a new leader):
    /// this attempt's record was dropped instead of overwriting theirs. The
    /// Delivery as stored now.
    Superseded(Box<Delivery>),
    /// Nothing to do: the Delivery is gone.
    Gone,
    /// Nothing was sent, for a reason that may pass (the API server did not
    /// answer whether the webhook exists): try again later.
    Deferred(String),
    /// Nothing was sent: this process may no longer act (shutting down, or
    /// not provably the leader).
    NotSent,
    /// Nothing was sent: the webhook was paused after the delivery was
    /// handed out.
    Paused,
    /// A request may have reached the handler but its outcome is not
    /// recorded (leadership lost mid-request, or the API server refuses the
    /// record even compacted). The next leader sends it again, same id.
    Unrecorded(String),
}

/// How long one API call of an attempt may take before it counts as failed.
const API_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a custom payload may take to render.
const RENDER_BUDGET: Duration = Duration::from_secs(2);
/// Longest pause between two tries of the same record write.
const RECORD_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Where an attempt goes: its webhook, or why it is not sent.
enum Target {
    Deliver(Arc<Webhook>),
    Cancel(String),
}

/// Reads an object from the API server (when a cache does not have it),
/// bounded in time; `Err` says why the answer is unknown.
pub(crate) async fn read<K>(engine: &Engine, ns: &str, name: &str) -> Result<Option<K>, String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    read_with(engine, ns, name, &GetParams::default()).await
}

/// `read` with a resourceVersion match: `GetParams::at(v)` is served from
/// the API server's cache, never older than version `v`.
pub(crate) async fn read_with<K>(engine: &Engine, ns: &str, name: &str, params: &GetParams) -> Result<Option<K>, String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(engine.client.clone(), ns);
    let kind = K::kind(&());
    match tokio::time::timeout(API_CALL_TIMEOUT, api.get_with(name, params)).await {
        Ok(Ok(found)) => Ok(Some(found)),
        Ok(Err(kube::Error::Api(e))) if e.code == 404 => Ok(None),
        Ok(Err(e)) => Err(format!("reading {kind} {name}: {e}")),
        Err(_) => Err(format!("reading {kind} {name}: no answer within {API_CALL_TIMEOUT:?}")),
    }
}

/// The webhook of a delivery, and whether it may be sent to. The cache may
/// lag behind ingest's (a webhook created or reactivated a moment ago), so a
/// missing or inactive webhook is confirmed with the API server before
/// anything is cancelled.
async fn target(engine: &Engine, ns: &str, name: &str) -> Result<Target, String> {
    if let Some(w) = engine.webhooks.get(&ObjectRef::new(name).within(ns))
        && engine.inactive_reason(&w).is_none()
    {
        return Ok(Target::Deliver(w));
    }
    Ok(match read::<Webhook>(engine, ns, name).await? {
        Some(w) => match engine.inactive_reason(&w) {
            None => Target::Deliver(Arc::new(w)),
            Some(why) => Target::Cancel(why),
        },
        None => Target::Cancel("the webhook was deleted".into()),
    })
}

/// The hub of a webhook, from the cache or else the API server, so a lagging
/// cache never sends with the default settings (egress, timeouts) instead
/// of the hub's.
async fn hub_of(engine: &Engine, ns: &str, name: &str) -> Result<Option<Arc<Hub>>, String> {
    match engine.hubs.get(&ObjectRef::new(name).within(ns)) {
        Some(h) => Ok(Some(h)),
        None => Ok(read::<Hub>(engine, ns, name).await?.map(Arc::new)),
    }
}

/// How long a claim must outlast a request's timeout for it to be sent.
pub(crate) const CLAIM_MARGIN: Duration = Duration::from_secs(10);

/// The Secret key a webhook signs with: its own, or the one the controller
/// generated (in its status).
fn signing_secret_ref(webhook: &Webhook) -> Option<crate::resources::SecretKeyRef> {
    webhook
        .spec
        .secret_ref
        .clone()
        .or_else(|| webhook.status.as_ref().and_then(|s| s.secret_ref.clone()))
}

/// Makes one attempt of `delivery` and records it. `claimed_until` is when
/// this process's claim on it ends (Postgres store): no request is started
/// that could outlast it, as another replica may take it over then.
/// `rate_limit_wait` is how long it waited for its turn (recorded with it).
pub async fn run(
    engine: &Engine,
    delivery: &Delivery,
    claimed_until: Option<Instant>,
    rate_limit_wait: Duration,
) -> Outcome {
    let ns = delivery.namespace().unwrap_or_default();
    let name = delivery.name_any();
    let mut status = delivery.status.clone().unwrap_or_default();
    // It is its turn now (or it never waited).
    status.waiting_for = None;
    if let Some(request) = delivery.redelivery_request() {
        // A manual redelivery: a new round of attempts under the same id,
        // recorded after the earlier ones.
        status.redelivered_for = Some(request.to_string());
        status.round_start = Some(status.attempt_count.saturating_add(1));
        status.phase = Phase::Pending;
        status.completed_at = None;
        status.message = None;
    }
    let webhook = match target(engine, &ns, &delivery.spec.webhook).await {
        // Paused meanwhile: held, its retries not advanced.
        Ok(Target::Deliver(w)) if w.spec.paused => return Outcome::Paused,
        Ok(Target::Deliver(w)) => w,
        Ok(Target::Cancel(why)) => return close(engine, delivery, status, Phase::Cancelled, why).await,
        Err(e) => return Outcome::Deferred(e),
    };
    // A webhook made Ready a moment ago may still lack its signing Secret
    // in this cache (ingest's cache can be ahead): read it before failing.
    let webhook = match signing_secret_ref(&webhook) {
        Some(_) => webhook,
        None => match read::<Webhook>(engine, &ns, &delivery.spec.webhook).await {
            Ok(Some(fresh)) => Arc::new(fresh),
            Ok(None) => webhook,
            Err(e) => return Outcome::Deferred(e),
        },
    };
    let hub = match hub_of(engine, &ns, &webhook.spec.hub).await {
        Ok(h) => h,
        Err(e) => return Outcome::Deferred(e),
    };
    let settings = Settings::resolve(&webhook, hub.as_deref(), &engine.egress_floor);

    let started_at = Timestamp::now();
    // This attempt's span in the event's trace (sent as `traceparent`).
    let span = delivery
        .spec
        .event
        .trace
        .as_ref()
        .and_then(crate::trace_context::child_span);
    let trace_headers = match (&delivery.spec.event.trace, &span) {
        (Some(trace), Some(span)) if settings.trace_context => crate::trace_context::attempt_headers(span, trace),
        _ => vec![],
    };
    let prepared = prepare(engine, delivery, &webhook, &settings, &ns, started_at, trace_headers).await;
    if let Err(NotSent::Invalid(why)) = &prepared {
        // No attempt can ever succeed; the handler is not at fault.
        engine.metrics.invalid_deliveries.inc();
        return close(engine, delivery, status, Phase::Failed, why.clone()).await;
    }
    // The last moment to make sure this process still leads, or still
    // holds its claim for as long as the requests may take (with OAuth 2.0
    // a token request and the request; `exchange` looks again before a
    // second round).
    let rounds = if webhook.spec.oauth2.is_some() { 2 } else { 1 };
    let claim_too_short = !claim_lasts(claimed_until, &settings, rounds);
    if !engine.leadership.may_act() || claim_too_short {
        return Outcome::NotSent;
    }
    let clock = Instant::now();
    let sent_at = std::time::SystemTime::now();
    let (recorded_request, result) = match prepared {
        Ok((mut outgoing, credentials)) => {
            let limits = Limits {
                timeout: settings.timeout,
                body_limit: settings.body_limit,
            };
            // Losing the lease cancels the request: a follower may be
            // sending the same delivery already.
            let result = tokio::select! {
                r = exchange(engine, &settings, &mut outgoing, credentials, &limits, claimed_until) => r,
                _ = engine.leadership.lost() => {
                    engine.metrics.unrecorded("lost");
                    return Outcome::Unrecorded("leadership was lost during the request".into());
                }
            };
            if webhook.spec.custom_payload.is_some() {
                // The rendered body, recorded once (it is the same on every
                // attempt unless the template changed).
                let (body, cut) =
                    super::http::fit_escaped(&String::from_utf8_lossy(&outgoing.body), engine.delivery_budget / 8);
                status.request_body = Some(body);
                status.request_body_truncated = cut;
            }
            (record_of(&outgoing), result)
        }
        Err(reason) => (
            RecordedRequest {
                method: webhook.spec.method.as_str().into(),
                url: request::redact_url(&webhook.spec.url),
                headers: vec![],
            },
            Err(SendError::NotSent(format!("not sent: {reason}"))),
        ),
    };
    let duration = clock.elapsed();

    if status.attempts.is_empty() {
        let received = delivery.spec.event.received_at.0;
        let wait = started_at.duration_since(received).as_secs_f64().max(0.0);
        engine.metrics.event_to_first_attempt.observe(wait);
    }
    let number = status.attempt_count.saturating_add(1);
    let (response, failure, retry_after) = match result {
        Ok((response, retry_after)) => (Some(response), None, retry_after),
        Err(e) => (None, Some(e), None),
    };
    let status_code = response.as_ref().map(|r| r.status_code);
    let result_label = attempt_result(status_code, failure.as_ref());
    engine.metrics.attempt(result_label);
    let error = failure.map(|e| e.to_string());
    if let (Some(trace), Some(span)) = (&delivery.spec.event.trace, &span) {
        record_span(
            trace,
            span,
            AttemptSpan {
                webhook: &webhook,
                ns: &ns,
                delivery: &name,
                number,
                status_code,
                result: result_label,
                error: error.as_deref(),
                sent_at,
                duration,
            },
        );
    }
    tracing::info!(
        delivery = %name, namespace = %ns, webhook = %webhook.name_any(), attempt = number,
        status = status_code, error = error.as_deref(), duration_ms = duration.as_millis() as u64,
        "attempt"
    );
    status.attempts.push(Attempt {
        number,
        time: MicroTime(started_at),
        duration_ms: duration.as_millis() as u64,
        rate_limit_wait_ms: Some(rate_limit_wait.as_millis() as u64).filter(|ms| *ms > 0),
        request: recorded_request,
        response,
        error,
    });
    status.attempt_count = number;
    status.last_status_code = status_code;

    let now = Timestamp::now();
    // A round begins at an attempt that exists; a nonsensical stored value
    // (the status is writable by others) counts as the first attempt.
    let round_start = status.round_start.unwrap_or(1).clamp(1, number);
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
    let round_started = status
        .attempts
        .iter()
        .find(|a| a.number == round_start)
        .map(|a| a.time.0)
        .unwrap_or(started_at);
    let round = Round {
        attempts: number + 1 - round_start,
        elapsed: Duration::try_from(now.duration_since(round_started)).unwrap_or_default(),
    };
    let answer = Answer {
        status_code,
        retry_after,
    };
    match outcome::decide(answer, round, &settings.schedule, rand::random::<f64>()) {
        Verdict::Succeeded => {
            status.phase = Phase::Succeeded;
            status.next_attempt_at = None;
            status.completed_at = Some(MicroTime(now));
            status.message = None;
        }
        Verdict::RetryIn(delay) => {
            status.phase = Phase::Retrying;
            status.next_attempt_at = Some(MicroTime(now + delay));
            status.message = None;
        }
        Verdict::Fail(GONE) => fail(
            &mut status,
            GONE,
            format!("delivery {name}: the handler answered 410 Gone; the webhook is deactivated"),
        ),
        Verdict::Fail(reason) => fail(
            &mut status,
            reason,
            format!(
                "delivery {name} failed after {} attempts ({} retries within {}s allowed); the webhook is deactivated",
                round.attempts,
                settings.schedule.max_retries,
                settings.schedule.window.as_secs()
            ),
        ),
    }
    let summary = DeliverySummary {
        id: name.clone(),
        event: delivery.spec.event.name.clone(),
        time: MicroTime(started_at),
        attempts: number,
        status_code,
        outcome: status.phase,
    };
    fit_budget(delivery, &mut status, engine.delivery_budget);
    match record(engine, delivery, status, summary).await {
        Outcome::Recorded(stored, _) => Outcome::Recorded(stored, deactivation),
        other => other,
    }
}

/// Records that the delivery ends without a request: Cancelled because its
/// webhook is inactive or gone, or Failed because it cannot be sent at all.
async fn close(engine: &Engine, delivery: &Delivery, mut status: DeliveryStatus, phase: Phase, why: String) -> Outcome {
    status.phase = phase;
    status.completed_at = Some(MicroTime(Timestamp::now()));
    status.next_attempt_at = None;
    status.message = Some(format!("not sent: {why}"));
    let summary = DeliverySummary {
        id: delivery.name_any(),
        event: delivery.spec.event.name.clone(),
        time: MicroTime(Timestamp::now()),
        attempts: status.attempt_count,
        status_code: status.last_status_code,
        outcome: phase,
    };
    record(engine, delivery, status, summary).await
}

/// Keeps a Delivery with `status` within `budget` bytes as stored: attempts
/// between the first and the newest are left out, oldest first (counted in
/// `attemptsOmitted`); if that is not enough, the kept attempts lose their
/// response bodies and headers, the first before the newest.
pub fn fit_budget(delivery: &Delivery, status: &mut DeliveryStatus, budget: usize) {
    let mut shell = delivery.clone();
    shell.metadata.managed_fields = None;
    shell.status = Some(DeliveryStatus {
        attempts: vec![],
        ..status.clone()
    });
    // The object without attempts, plus each attempt (and a separator).
    let base = json_len(&shell);
    let mut sizes: Vec<usize> = status.attempts.iter().map(|a| json_len(a) + 1).collect();
    let total = |sizes: &[usize]| base + sizes.iter().sum::<usize>();
    while total(&sizes) > budget && status.attempts.len() > 2 {
        status.attempts.remove(1);
        sizes.remove(1);
        status.attempts_omitted += 1;
    }
    let last = status.attempts.len().saturating_sub(1);
    for i in [0, last] {
        if total(&sizes) <= budget {
            return;
        }
        if let Some(response) = status.attempts.get_mut(i).and_then(|a| a.response.as_mut()) {
            response.body_truncated |= !response.body.is_empty();
            response.headers_truncated |= !response.headers.is_empty();
            response.body.clear();
            response.headers.clear();
            sizes[i] = json_len(&status.attempts[i]) + 1;
        }
    }
}

/// How many bytes `value` takes as JSON.
fn json_len(value: &impl serde::Serialize) -> usize {
    serde_json::to_vec(value).map(|v| v.len()).unwrap_or(0)
}

/// A record small enough for any API server: the first and the newest
/// attempt without response headers and bodies, errors cut to 1 KiB.
fn compact(delivery: &Delivery, mut status: DeliveryStatus) -> DeliveryStatus {
    fit_budget(delivery, &mut status, 0);
    for e in status.attempts.iter_mut().filter_map(|a| a.error.as_mut()) {
        let mut end = e.len().min(1024);
        while !e.is_char_boundary(end) {
            end -= 1;
        }
        e.truncate(end);
    }
    status
}

/// The status write of an attempt. Once a request was sent its outcome is
/// kept here until stored: a failed write is retried as a write, with
/// capped exponential backoff, never by sending the request again. A record
/// the store refuses is written once more compacted.
async fn record(engine: &Engine, delivery: &Delivery, mut status: DeliveryStatus, summary: DeliverySummary) -> Outcome {
    let (ns, name) = (delivery.namespace().unwrap_or_default(), delivery.name_any());
    let mut compacted = false;
    let mut delay = Duration::from_millis(200);
    loop {
        let failure = match engine.records.record(delivery, &status, &engine.claimant).await {
            Ok(Written::Stored(stored)) => {
                recorded(engine, &ns, delivery, &status, summary);
                return Outcome::Recorded(Box::new(stored), None);
            }
            Ok(Written::Superseded(fresh)) => {
                tracing::warn!(delivery = %name, namespace = %ns, "another writer recorded this delivery first; this attempt's record is dropped");
                engine.metrics.unrecorded("superseded");
                return Outcome::Superseded(Box::new(fresh));
            }
            Ok(Written::Gone) => return Outcome::Gone,
            Err(StoreError::Invalid(why) | StoreError::TooLarge(why)) => {
                if !compacted {
                    tracing::warn!(delivery = %name, namespace = %ns, reason = %why, "the store refuses the record; writing it compacted");
                    status = compact(delivery, status);
                    compacted = true;
                    continue;
                }
                engine.metrics.unrecorded("refused");
                return Outcome::Unrecorded(format!("the store refuses the record even compacted ({why})"));
            }
            Err(e) => e.to_string(),
        };
        engine.metrics.record_retries.inc();
        tracing::warn!(delivery = %name, namespace = %ns, error = %failure, retry_in_ms = delay.as_millis() as u64,
            "could not record the attempt; retrying the write (the request is not sent again)");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECORD_BACKOFF_CAP);
    }
}

/// What an attempt's record counts once stored.
fn recorded(engine: &Engine, ns: &str, delivery: &Delivery, status: &DeliveryStatus, summary: DeliverySummary) {
    let finished = status.phase.is_finished();
    if finished {
        engine
            .metrics
            .delivery_finished(&format!("{:?}", status.phase).to_lowercase());
    }
    engine.summaries.record(ns, &delivery.spec.webhook, summary, finished);
}

/// A label for the attempts metric.
fn attempt_result(status: Option<u16>, failure: Option<&SendError>) -> &'static str {
    match (status, failure) {
        (Some(c), _) if (200..300).contains(&c) => "success",
        (Some(_), _) => "http_error",
        (None, Some(e)) => e.label(),
        (None, None) => "connection_error",
    }
}

/// What an attempt's span says.
struct AttemptSpan<'a> {
    webhook: &'a Webhook,
    ns: &'a str,
    delivery: &'a str,
    number: u32,
    status_code: Option<u16>,
    result: &'static str,
    error: Option<&'a str>,
    sent_at: std::time::SystemTime,
    duration: Duration,
}

/// Exports the span of an attempt (when spans are exported): a child of
/// ingest's span with the id its `traceparent` carried. The handler's host,
/// never its URL's path, query or credentials.
fn record_span(trace: &crate::resources::delivery::TraceContext, traceparent: &str, a: AttemptSpan<'_>) {
    use opentelemetry::KeyValue;
    if !crate::spans::enabled() {
        return;
    }
    let url = reqwest::Url::parse(&a.webhook.spec.url).ok();
    let mut attributes = vec![
        KeyValue::new("http.request.method", a.webhook.spec.method.as_str()),
        KeyValue::new("k8s.namespace.name", a.ns.to_string()),
        KeyValue::new("hookrelay.webhook", a.webhook.name_any()),
        KeyValue::new("hookrelay.delivery", a.delivery.to_string()),
        KeyValue::new("hookrelay.attempt", i64::from(a.number)),
        KeyValue::new("hookrelay.attempt.result", a.result),
    ];
    if let Some(url) = &url {
        attributes.push(KeyValue::new("url.scheme", url.scheme().to_string()));
        attributes.extend(url.host_str().map(|h| KeyValue::new("server.address", h.to_string())));
        attributes.extend(
            url.port_or_known_default()
                .map(|p| KeyValue::new("server.port", i64::from(p))),
        );
    }
    attributes.extend(
        a.status_code
            .map(|c| KeyValue::new("http.response.status_code", i64::from(c))),
    );
    let failed = a.status_code.is_none_or(|c| !(200..300).contains(&c));
    crate::spans::record(crate::spans::Finished {
        name: a.webhook.spec.method.as_str(),
        kind: opentelemetry::trace::SpanKind::Client,
        traceparent,
        parent: Some(&trace.traceparent),
        tracestate: trace.tracestate.as_deref(),
        start: a.sent_at,
        end: a.sent_at + a.duration,
        attributes,
        error: failed.then(|| a.error.map(str::to_string).unwrap_or_else(|| a.result.to_string())),
    });
}

/// Whether a claim ending at `until` (none: the Kubernetes store's leader
/// holds no claim) outlasts `requests` requests of these settings, with
/// `CLAIM_MARGIN` to spare.
fn claim_lasts(until: Option<Instant>, settings: &Settings, requests: u32) -> bool {
    let longest = (settings.timeout + settings.connect_timeout) * requests + CLAIM_MARGIN;
    until.is_none_or(|until| Instant::now() + longest <= until)
}

/// Sends the request with the webhook's client certificate and, for
/// OAuth 2.0, a bearer token; a 401 answer gets one retry with a new token
/// if the claim (`claimed_until`) outlasts the two more requests that takes.
async fn exchange(
    engine: &Engine,
    settings: &Settings,
    outgoing: &mut Outgoing,
    credentials: Credentials,
    limits: &Limits,
    claimed_until: Option<Instant>,
) -> Result<(crate::resources::delivery::RecordedResponse, Option<Duration>), SendError> {
    let client = |tls| {
        engine
            .http
            .get(&ClientKey {
                connect_timeout: settings.connect_timeout,
                egress: settings.egress.clone(),
                tls,
            })
            .map_err(|e| SendError::NotSent(format!("not sent: {e}")))
    };
    let handler = client(credentials.tls)?;
    let Some(oauth) = credentials.oauth2 else {
        return super::http::send(&handler, &settings.egress, outgoing, limits).await;
    };
    // The token endpoint: no client certificate, the same egress checks.
    let token_client = client(None)?;
    let token = |refused| {
        let (tokens, client) = (&engine.tokens, &token_client);
        let oauth = &oauth;
        async move {
            tokens
                .get(client, &settings.egress, settings.timeout, oauth, refused)
                .await
                .map_err(|e| SendError::NotSent(format!("not sent: {e}")))
        }
    };
    let first = token(None).await?;
    auth::set_bearer(outgoing, &first);
    let answer = super::http::send(&handler, &settings.egress, outgoing, limits).await;
    if !matches!(&answer, Ok((response, _)) if response.status_code == 401) {
        return answer;
    }
    // Revoked or expired early: one new token, one more try. If no new
    // token comes, or another replica could take the delivery over before
    // both requests end, the 401 that was received is what gets recorded (a
    // request was sent: "not sent" would be untrue).
    if !claim_lasts(claimed_until, settings, 2) {
        return answer;
    }
    let Ok(fresh) = token(Some(first.as_str())).await else {
        return answer;
    };
    auth::set_bearer(outgoing, &fresh);
    super::http::send(&handler, &settings.egress, outgoing, limits).await
}

fn record_of(outgoing: &Outgoing) -> RecordedRequest {
    RecordedRequest {
        method: outgoing.method.to_string(),
        url: request::redact_url(&outgoing.url),
        headers: outgoing.recorded_headers.clone(),
    }
}

/// Why a request was not built. Neither variant carries a secret value.
#[derive(Debug, thiserror::Error)]
enum NotSent {
    /// Missing or broken configuration: recorded as a failed attempt and
    /// retried, since it can be fixed.
    #[error("{0}")]
    Config(String),
    /// The Delivery itself is unusable: it fails at once.
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for NotSent {
    fn from(s: String) -> Self {
        Self::Config(s)
    }
}

impl From<&str> for NotSent {
    fn from(s: &str) -> Self {
        Self::Config(s.to_string())
    }
}

/// The ed25519 keys a webhook signs `v1a` with: the current one and, during
/// a rotation overlap (`overlap`), the previous one.
fn asymmetric_keys(
    secret: &k8s_openapi::api::core::v1::Secret,
    overlap: bool,
) -> Result<Vec<ring::signature::Ed25519KeyPair>, NotSent> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let current = secrets::value(secret, secrets::PRIVATE_KEY).ok_or_else(|| {
        format!(
            "signing Secret {name} has no private key yet (key {})",
            secrets::PRIVATE_KEY
        )
    })?;
    let mut pairs = vec![signing::key_pair(current).map_err(|e| format!("signing Secret {name}: {e}"))?];
    if overlap
        && let Some(previous) = secrets::value(secret, secrets::PREVIOUS_PRIVATE_KEY)
        && let Ok(pair) = signing::key_pair(previous)
    {
        pairs.push(pair);
    }
    Ok(pairs)
}

/// Everything before sending: secrets, headers, body.
async fn prepare(
    engine: &Engine,
    delivery: &Delivery,
    webhook: &Webhook,
    settings: &Settings,
    ns: &str,
    now: Timestamp,
    trace_headers: Vec<(&'static str, String)>,
) -> Result<(Outgoing, Credentials), NotSent> {
    let credentials = auth::resolve(&engine.secrets, ns, &webhook.name_any(), &webhook.spec)
        .await
        .map_err(|e| format!("reading Secrets: {e}"))??;
    let secret_ref = signing_secret_ref(webhook).ok_or("the webhook has no signing secret yet")?;
    let secret = engine
        .secrets
        .get(ns, &secret_ref.name)
        .await
        .map_err(|e| format!("reading Secret {}: {e}", secret_ref.name))?;
    let current = if webhook.spec.secret_ref.is_some() {
        // Brought: only with its owner's consent (as the controller checks).
        secrets::consented_value(
            secret.as_deref(),
            CREDENTIAL_CONSENT_LABEL,
            &secret_ref.name,
            &secret_ref.key,
        )
        .map_err(|message| format!("spec.secretRef: {message}"))?
    } else {
        secret
            .as_deref()
            .and_then(|s| secrets::value(s, &secret_ref.key))
            .ok_or_else(|| {
                format!(
                    "signing Secret {} has no non-empty key {}",
                    secret_ref.name, secret_ref.key
                )
            })?
    };
    let secret = secret.as_deref().expect("a value was read from it");
    // During a rotation overlap the previous value signs too.
    let previous = secrets::previous_expires_at(secret)
        .filter(|expires| *expires > now)
        .and_then(|_| secrets::value(secret, secrets::PREVIOUS_KEY));

    let mut custom = Vec::with_capacity(webhook.spec.headers.len() + trace_headers.len());
    // A header of the webhook's own by the same name wins.
    let own = |name: &str| webhook.spec.headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    for (name, value) in trace_headers {
        if !own(name) {
            custom.push(ResolvedHeader {
                name: name.to_string(),
                value,
                secret: false,
            });
        }
    }
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
                    .map_err(|e| format!("reading Secret {}: {e}", r.name))?;
                let value = secrets::header_value(s.as_deref(), &header.name, &r.name, &r.key)?;
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
    let body = match webhook.spec.custom_payload.clone() {
        None => request::body(delivery, None),
        // A tenant's template: rendered off the async threads, with a time
        // budget (its cost is bounded by `template::check` as well).
        Some(template) => {
            let delivery = delivery.clone();
            let render = tokio::task::spawn_blocking(move || request::body(&delivery, Some(&template)));
            match tokio::time::timeout(RENDER_BUDGET, render).await {
                Ok(Ok(body)) => body,
                Ok(Err(e)) => return Err(NotSent::Config(format!("customPayload: rendering failed: {e}"))),
                Err(_) => {
                    return Err(NotSent::Config(format!(
                        "customPayload: rendering took longer than {RENDER_BUDGET:?}"
                    )));
                }
            }
        }
    }
    .map_err(|e| match e {
        request::BodyError::Payload(p) => NotSent::Invalid(p.to_string()),
        request::BodyError::Template(t) => NotSent::Config(t.to_string()),
    })?;
    let pairs = match settings.scheme.asymmetric() {
        true => asymmetric_keys(secret, previous.is_some())?,
        false => vec![],
    };
    let keys = SigningKeys {
        header: &settings.signature_header,
        current,
        previous,
        symmetric: settings.scheme.symmetric(),
        asymmetric: &pairs,
    };
    let outgoing = request::build(
        &delivery.name_any(),
        webhook.spec.method.as_str(),
        &webhook.spec.url,
        body,
        &keys,
        &custom,
        now.as_second(),
    );
    Ok((outgoing, credentials))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::delivery::{DeliverySpec, EventRef, Header, RecordedResponse};

    #[test]
    fn a_compacted_record_keeps_first_and_newest_without_bodies() {
        let d = delivery();
        let mut status = DeliveryStatus {
            attempts: (1..=5).map(|n| attempt(n, 1000)).collect(),
            attempt_count: 5,
            ..Default::default()
        };
        status.attempts[4].error = Some("e".repeat(5000));
        let c = compact(&d, status);
        let numbers: Vec<u32> = c.attempts.iter().map(|a| a.number).collect();
        assert_eq!(numbers, vec![1, 5]);
        assert!(c.attempts.iter().all(|a| a.response.as_ref().unwrap().body.is_empty()));
        assert_eq!(c.attempts[1].error.as_ref().unwrap().len(), 1024);
    }

    fn attempt(number: u32, body: usize) -> Attempt {
        Attempt {
            number,
            time: MicroTime(Timestamp::UNIX_EPOCH),
            duration_ms: 1,
            rate_limit_wait_ms: None,
            request: RecordedRequest {
                method: "POST".into(),
                url: "http://127.0.0.1/h".into(),
                headers: vec![],
            },
            response: Some(RecordedResponse {
                status_code: 500,
                headers: vec![Header {
                    name: "x".into(),
                    value: "y".repeat(100),
                }],
                headers_truncated: false,
                body: "b".repeat(body),
                body_truncated: false,
            }),
            error: None,
        }
    }

    fn delivery() -> Delivery {
        Delivery::new(
            "d",
            DeliverySpec {
                webhook: "w".into(),
                hub: "h".into(),
                event: EventRef {
                    id: "e".into(),
                    name: "n".into(),
                    received_at: MicroTime(Timestamp::UNIX_EPOCH),
                    trace: None,
                },
                payload: format!("\"{}\"", "p".repeat(1000)),
            },
        )
    }

    fn stored_size(d: &Delivery, status: &DeliveryStatus) -> usize {
        let mut d = d.clone();
        d.status = Some(status.clone());
        json_len(&d)
    }

    #[test]
    fn attempts_beyond_the_budget_are_omitted_keeping_the_first_and_newest() {
        let d = delivery();
        let mut status = DeliveryStatus {
            attempts: (1..=19).map(|n| attempt(n, 4000)).collect(),
            attempt_count: 19,
            ..Default::default()
        };
        fit_budget(&d, &mut status, 20_000);
        assert!(stored_size(&d, &status) <= 20_000);
        let numbers: Vec<u32> = status.attempts.iter().map(|a| a.number).collect();
        assert_eq!(numbers.first(), Some(&1));
        assert_eq!(numbers.last(), Some(&19));
        assert_eq!(status.attempts_omitted as usize + numbers.len(), 19);
        assert_eq!(status.attempt_count, 19, "the true total stays");
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "newest kept, oldest dropped first: {numbers:?}"
        );
    }

    #[test]
    fn within_the_budget_nothing_changes_and_past_it_bodies_go_too() {
        let d = delivery();
        let mut status = DeliveryStatus {
            attempts: vec![attempt(1, 100), attempt(2, 100)],
            attempt_count: 2,
            ..Default::default()
        };
        let before = status.clone();
        fit_budget(&d, &mut status, 100_000);
        assert_eq!(status, before);
        let mut big = DeliveryStatus {
            attempts: vec![attempt(1, 30_000), attempt(2, 30_000)],
            attempt_count: 2,
            ..Default::default()
        };
        fit_budget(&d, &mut big, 40_000);
        assert!(stored_size(&d, &big) <= 40_000);
        let first = big.attempts[0].response.as_ref().unwrap();
        assert!(
            first.body.is_empty() && first.body_truncated,
            "the first loses its body first"
        );
        assert_eq!(
            big.attempts[1].response.as_ref().unwrap().body.len(),
            30_000,
            "the newest keeps it"
        );
    }
}
