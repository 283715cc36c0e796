//! `hookrelay ingest`: the HTTP endpoint the CMS posts events to. It
//! authenticates the hub's bearer token, validates the event, selects the
//! subscribed webhooks from watched caches and stores one Delivery per
//! webhook, answering 202 only once all are stored.

pub mod event;
pub mod pressure;
pub mod rate;
pub mod verify;

use crate::events::is_known_event;
use crate::fanout;
use crate::kubernetes::{namespaced_api, watched};
use crate::metrics::{CodeLabel, Metrics};
use crate::resources::hub::{Scheme, VerifyScheme};
use crate::resources::{Hub, Webhook};
use crate::secret_cache::SecretCache;
use crate::secrets;
use crate::server::{self, Readiness};
use crate::store::{Deliveries, NewDelivery, StoreError};
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// What a 503 asks the CMS to wait before retrying.
const RETRY_AFTER_SECONDS: u64 = 5;
/// After refusing a request whose body is still arriving, how much of it
/// is read and dropped, and for how long, so the sender (which may not read
/// an answer before it has sent everything) gets the answer instead of a
/// reset connection.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

pub struct Settings {
    pub listen: SocketAddr,
    /// Where `/metrics` (and health) are served, apart from the events port.
    pub metrics_listen: SocketAddr,
    /// Header-read timeout and connection limit of the events port.
    pub connections: server::ConnectionLimits,
    /// The most one request may take, body included.
    pub request_timeout: Duration,
    pub body_limit: usize,
    /// The size a Delivery may reach; a payload may take half of it.
    pub delivery_budget: usize,
    /// Namespaces served; empty serves all.
    pub namespaces: Vec<String>,
    /// Where deliveries live.
    pub store: crate::store::Store,
    /// Store writes slower than this mean it is saturated (zero: never).
    pub backpressure_latency: Duration,
}

/// The watched Hubs and Webhooks of one namespace (or of all, `None`).
struct Scope {
    namespace: Option<String>,
    hubs: Store<Hub>,
    webhooks: Store<Webhook>,
}

struct Ingest {
    scopes: Vec<Scope>,
    secrets: Arc<SecretCache>,
    metrics: Arc<Metrics>,
    body_limit: usize,
    delivery_budget: usize,
    request_timeout: Duration,
    rate: rate::Limits,
    pressure: pressure::Pressure,
    deliveries: Arc<dyn Deliveries>,
    /// The store's name (in spans).
    store_name: &'static str,
    /// Events on Hubs (backpressure), at most one per hub a minute.
    recorder: kube::runtime::events::Recorder,
    told: std::sync::Mutex<HashMap<(String, String), std::time::Instant>>,
}

/// Runs the ingest server until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let namespaces: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let secrets = SecretCache::new(client.clone());
    let scopes: Vec<Scope> = namespaces
        .into_iter()
        .map(|namespace| {
            tokio::spawn(secrets.clone().watch(namespace.clone()));
            Scope {
                hubs: watched(namespaced_api::<Hub>(&client, namespace.as_deref())),
                webhooks: watched(namespaced_api::<Webhook>(&client, namespace.as_deref())),
                namespace,
            }
        })
        .collect();
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    {
        let stores: Vec<(Store<Hub>, Store<Webhook>)> =
            scopes.iter().map(|s| (s.hubs.clone(), s.webhooks.clone())).collect();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            for (hubs, webhooks) in stores {
                if hubs.wait_until_ready().await.is_err() || webhooks.wait_until_ready().await.is_err() {
                    return;
                }
            }
            readiness.set_ready();
            tracing::info!("ingest caches synced; ready");
        });
    }
    let state = Arc::new(Ingest {
        scopes,
        secrets,
        metrics: metrics.clone(),
        body_limit: settings.body_limit,
        delivery_budget: settings.delivery_budget,
        request_timeout: settings.request_timeout,
        rate: rate::Limits::default(),
        pressure: pressure::Pressure::new(settings.backpressure_latency),
        deliveries: settings.store.deliveries(&client),
        store_name: settings.store.name(),
        recorder: kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "hookrelay-ingest".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        told: Default::default(),
    });
    // The gauges, read once a second (saturation ends with the hold, not
    // only when an event comes).
    tokio::spawn({
        let state = Arc::downgrade(&state);
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while let Some(ingest) = state.upgrade() {
                let saturated = ingest.pressure.saturated(std::time::Instant::now());
                ingest.metrics.ingest_saturated.set(i64::from(saturated));
                let latency = ingest.pressure.latency().as_secs_f64();
                ingest.metrics.ingest_write_latency.set(latency);
                drop(ingest);
                tick.tick().await;
            }
        }
    });
    let router = Router::new()
        .route("/v1/namespaces/{namespace}/hubs/{hub}/events", post(receive))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
        .merge(server::health_routes(metrics.clone(), readiness.clone()));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let ops_listener = tokio::net::TcpListener::bind(settings.metrics_listen).await?;
    tracing::info!(listen = %ops_listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    let ops = tokio::spawn(server::serve(
        ops_listener,
        server::ops_routes(metrics, readiness),
        stop.clone().cancelled_owned(),
    ));
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "ingest listening");
    server::serve_limited(listener, router, stop.cancelled_owned(), settings.connections).await?;
    ops.await??;
    Ok(())
}

/// An error answer: a status, a stable code and a message saying what is wrong.
struct Problem {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds a 429 asks the sender to wait.
    retry_after: Option<u64>,
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The one answer to an unknown hub and to a wrong token alike, so the
    /// answer does not tell which hubs exist.
    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a valid bearer token of the hub is required",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(json!({ "error": self.code, "message": self.message })),
        )
            .into_response();
        let headers = response.headers_mut();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after.unwrap_or(1)));
            }
            _ => {}
        }
        response
    }
}

async fn receive(
    State(ingest): State<Arc<Ingest>>,
    Path((namespace, hub)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = Some(body);
    let accepted = tokio::time::timeout(
        ingest.request_timeout,
        accept(&ingest, &namespace, &hub, &headers, &mut body),
    )
    .await
    .unwrap_or_else(|_| {
        // A body that trickles in, or a store that hangs: nothing was
        // accepted (a half-stored event with an id of ours is not reachable
        // again, one with the sender's id is completed by its retry).
        Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "Timeout",
            format!("the request took longer than {}s", ingest.request_timeout.as_secs()),
        ))
    });
    let response = match accepted {
        Ok(accepted) => (StatusCode::ACCEPTED, axum::Json(accepted)).into_response(),
        Err(problem) => {
            // Refused before the body was read (wrong token, too large):
            // read and drop it, bounded, then close the connection, so the
            // sender reads this answer rather than a reset.
            let unread = body.take();
            let close = unread.is_some();
            if let Some(unread) = unread {
                drain(unread.into_data_stream()).await;
            }
            if problem.status.is_server_error() {
                tracing::warn!(namespace, hub, code = problem.code, message = %problem.message, "event not accepted");
            } else {
                tracing::debug!(namespace, hub, code = problem.code, message = %problem.message, "event rejected");
            }
            let mut response = problem.into_response();
            if close {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    let code = response.status().as_u16().to_string();
    ingest.metrics.ingest_requests.get_or_create(&CodeLabel { code }).inc();
    response
}

async fn accept(
    ingest: &Ingest,
    namespace: &str,
    hub_name: &str,
    headers: &HeaderMap,
    body: &mut Option<Body>,
) -> Result<serde_json::Value, Problem> {
    let arrived = std::time::SystemTime::now();
    let scope = ingest
        .scopes
        .iter()
        .find(|s| s.namespace.as_deref().is_none_or(|n| n == namespace));
    let hub = scope.and_then(|scope| scope.hubs.get(&ObjectRef::new(hub_name).within(namespace)));
    let (Some(scope), Some(hub)) = (scope, hub) else {
        // Unknown hub: the same answer as a wrong token.
        return Err(Problem::unauthorized());
    };
    // The bearer token, or (when the hub accepts them) a signature of the
    // body, which must then be read first.
    let schemes = hub.spec.ingest.as_ref().map(|i| i.verify.clone()).unwrap_or_default();
    let bearer = schemes.iter().find(|s| s.scheme == Scheme::Bearer);
    let mut signed: Option<(bytes::Bytes, Signed)> = None;
    if schemes.is_empty() || (bearer.is_some() && headers.contains_key(header::AUTHORIZATION)) {
        let token = bearer.and_then(|b| b.secret_ref.as_ref());
        authenticate(ingest, &hub, namespace, headers, token).await?;
    } else {
        let bytes = read_body(body, headers, ingest.body_limit).await?;
        let id = verify_signed(ingest, namespace, &schemes, headers, &bytes).await?;
        signed = Some((bytes, id));
    }
    if let Err(wait) = ingest.rate.admit(namespace, &hub, std::time::Instant::now()) {
        let mut problem = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RateLimited",
            format!("Hub {hub_name} accepts at most its spec.ingest.rateLimit; retry later"),
        );
        problem.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        return Err(problem);
    }

    let (body, signed) = match signed {
        Some((bytes, by)) => (bytes, Some(by)),
        None => (read_body(body, headers, ingest.body_limit).await?, None),
    };
    if signed.is_some() && headers.contains_key("ce-specversion") {
        // Its type and id would come from headers no signature covers.
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "UnsignedAttributes",
            "a hub that verifies signatures does not accept binary-mode CloudEvents: their ce-type and ce-id headers are not signed; send a structured CloudEvent (application/cloudevents+json) or the CMS envelope",
        ));
    }
    let incoming = event::parse(headers, &body).map_err(|rejection| match rejection {
        event::Rejection::MediaType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            rejection.to_string(),
        ),
        event::Rejection::Json(_) => Problem::new(StatusCode::BAD_REQUEST, "MalformedJson", rejection.to_string()),
        event::Rejection::Invalid(_) => Problem::new(StatusCode::BAD_REQUEST, "InvalidEvent", rejection.to_string()),
    })?;
    if crate::events::is_operational(&incoming.name) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "UnknownEvent",
            format!(
                "event names starting with \"hookrelay.\" ({:?}) are hookrelay's own and are not accepted from senders",
                incoming.name
            ),
        ));
    }
    if !is_known_event(&incoming.name, hub.spec.custom_events.iter().map(String::as_str)) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "UnknownEvent",
            format!(
                "unknown event name {:?}: not a built-in event and not in Hub {hub_name}'s spec.customEvents",
                incoming.name
            ),
        ));
    }

    // The event id: a signed request's comes from what is signed, so a
    // replay is the same event (deduplicated), never a new one.
    let sender_id = match signed {
        Some(Signed::StandardWebhooks(message_id)) => Some(message_id),
        Some(Signed::Cms) => Some(incoming.id.clone().unwrap_or_else(|| body_digest(&body))),
        None => incoming.id.clone(),
    };
    let generated_id = sender_id.is_none();
    let id = sender_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let received_at = Timestamp::now();
    let payload = incoming.payload.to_string();
    let most = crate::resources::delivery::max_payload(ingest.delivery_budget);
    if payload.len() > most {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "TooLarge",
            format!(
                "the payload takes {} bytes; a Delivery's size budget of {} bytes allows at most {most} for the payload (half, the rest is for its attempts)",
                payload.len(),
                ingest.delivery_budget
            ),
        ));
    }
    let (selected, skipped) = select(scope, namespace, hub_name, &id, &incoming).await?;
    // Built one at a time as the store takes them (a store holds a few
    // copies of the payload at once, whatever the fan-out).
    let names: Vec<String> = selected.iter().map(|(w, _)| fanout::delivery_name(&id, w)).collect();
    let admitted = ingest
        .pressure
        .admit_or_wait(&(namespace.to_string(), hub_name.to_string()), names.len())
        .await
        .map_err(|refusal| ingest.back_off(&hub, refusal))?;
    // Ingest's span of the event's trace: the parent of every attempt.
    let trace = crate::trace_context::at_ingest(incoming.traceparent.as_deref(), incoming.tracestate.as_deref());
    let deliveries = selected.into_iter().map(|(w, ordering_key)| {
        let mut delivery = fanout::build(&w, &id, &incoming.name, &payload, received_at);
        delivery.spec.event.trace = Some(trace.clone());
        NewDelivery { delivery, ordering_key }
    });
    let started = std::time::Instant::now();
    let writing = std::time::SystemTime::now();
    let stored = ingest
        .deliveries
        .insert(namespace, Box::new(deliveries), generated_id)
        .await;
    let written = std::time::SystemTime::now();
    // A failed write (a timeout above all) says as much about the store.
    admitted.stored(started.elapsed(), std::time::Instant::now());
    drop(admitted);
    stored.map_err(refused)?;
    ingest.metrics.ingest_deliveries_created.inc_by(names.len() as u64);
    tracing::info!(namespace, hub = hub_name, event = %incoming.name, id, trace_id = trace.trace_id(), deliveries = names.len(), "event accepted");
    record_spans(
        &trace,
        &incoming,
        ingest.store_name,
        [namespace, hub_name, &id],
        names.len(),
        (arrived, writing, written),
    );
    let mut answer = json!({ "id": id, "name": incoming.name, "traceId": trace.trace_id(), "deliveries": names });
    if !skipped.is_empty() {
        // Subscribed, but not sent to: their configuration is broken.
        answer["skipped"] = skipped
            .into_iter()
            .map(|(webhook, reason)| json!({ "webhook": webhook, "reason": reason }))
            .collect();
    }
    Ok(answer)
}

/// Exports ingest's span of an accepted event (a child of the sender's,
/// with the id stored as the event's `traceparent`) and its store write's.
/// Names and counts only: no payload, header value or token.
fn record_spans(
    trace: &crate::resources::delivery::TraceContext,
    incoming: &event::IncomingEvent,
    store: &'static str,
    [namespace, hub, id]: [&str; 3],
    deliveries: usize,
    (arrived, writing, written): (std::time::SystemTime, std::time::SystemTime, std::time::SystemTime),
) {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::SpanKind;
    if !crate::spans::enabled() {
        return;
    }
    let sender = incoming
        .traceparent
        .as_deref()
        .filter(|p| crate::trace_context::parse(p).is_some());
    crate::spans::record(crate::spans::Finished {
        name: "hookrelay.ingest",
        kind: SpanKind::Server,
        traceparent: &trace.traceparent,
        parent: sender,
        tracestate: trace.tracestate.as_deref(),
        start: arrived,
        end: std::time::SystemTime::now(),
        attributes: vec![
            KeyValue::new("k8s.namespace.name", namespace.to_string()),
            KeyValue::new("hookrelay.hub", hub.to_string()),
            KeyValue::new("hookrelay.event.name", incoming.name.clone()),
            KeyValue::new("hookrelay.event.id", id.to_string()),
            KeyValue::new("hookrelay.deliveries", deliveries as i64),
        ],
        error: None,
    });
    if let Some(write) = crate::trace_context::child_span(trace) {
        crate::spans::record(crate::spans::Finished {
            name: "hookrelay.store.insert",
            kind: SpanKind::Internal,
            traceparent: &write,
            parent: Some(&trace.traceparent),
            tracestate: trace.tracestate.as_deref(),
            start: writing,
            end: written,
            attributes: vec![
                KeyValue::new("hookrelay.store", store),
                KeyValue::new("hookrelay.deliveries", deliveries as i64),
            ],
            error: None,
        });
    }
}

/// The webhooks `incoming` triggers, each with its ordering key, and those
/// skipped with why. Filters and ordering keys are evaluated over every
/// subscribed webhook: CPU work, done off the async threads.
async fn select(
    scope: &Scope,
    namespace: &str,
    hub: &str,
    id: &str,
    incoming: &event::IncomingEvent,
) -> Result<(Vec<(Arc<Webhook>, Option<String>)>, Vec<(String, String)>), Problem> {
    let webhooks = scope.webhooks.state();
    let document = fanout::document(id, &incoming.name, &incoming.payload);
    let (namespace, hub, name) = (namespace.to_string(), hub.to_string(), incoming.name.clone());
    tokio::task::spawn_blocking(move || {
        let (selected, skipped) = fanout::select(webhooks.iter(), &namespace, &hub, &name, &document);
        let selected = selected
            .into_iter()
            .map(|w| (w.clone(), fanout::ordering_key(w, &document)))
            .collect();
        (selected, skipped)
    })
    .await
    .map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            format!("selecting webhooks: {e}"),
        )
    })
}

/// Reads the body up to `limit` bytes. A declared length over the limit is
/// refused before reading; a body that grows past it is refused on the spot,
/// leaving the rest unread in `body` for the caller to drain.
async fn read_body(body: &mut Option<Body>, headers: &HeaderMap, limit: usize) -> Result<bytes::Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "TooLarge",
            format!("the event body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut stream = body.take().expect("the body is read once").into_data_stream();
    let mut read = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "BadBody", format!("reading the body: {e}")))?;
        if read.len() + chunk.len() > limit {
            *body = Some(Body::from_stream(stream));
            return Err(too_large());
        }
        read.extend_from_slice(&chunk);
    }
    Ok(read.freeze())
}

/// Reads and drops what is left of a refused body, bounded in bytes and time.
async fn drain(mut stream: axum::body::BodyDataStream) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut dropped = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            dropped += chunk.len();
            if dropped > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Which signature admitted a request.
enum Signed {
    /// The CMS's own scheme: the body alone is signed.
    Cms,
    /// Standard Webhooks: the body and this message id are signed.
    StandardWebhooks(String),
}

/// The id of an id-less event whose body alone is signed: its SHA-256.
fn body_digest(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest: String = Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256-{digest}")
}

/// Checks the body's signature against each signature scheme of the hub.
async fn verify_signed(
    ingest: &Ingest,
    namespace: &str,
    schemes: &[VerifyScheme],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Signed, Problem> {
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // The reason given is that of a scheme whose headers were presented.
    let mut why: Option<String> = None;
    for scheme in schemes.iter().filter(|s| s.scheme != Scheme::Bearer) {
        let (Some(reference), presented) = (
            &scheme.secret_ref,
            match scheme.scheme {
                Scheme::Amplience => header_text("x-amplience-webhook-signature").is_some(),
                _ => header_text("webhook-signature").is_some(),
            },
        ) else {
            continue;
        };
        let secret = match ingest.secrets.get_seen(namespace, &reference.name).await {
            Ok(Some(s)) => s,
            _ => {
                // Per request, and anyone can cause it: debug, not warn.
                tracing::debug!(namespace, secret = %reference.name, "a verification Secret of a hub is missing");
                continue;
            }
        };
        let Some(value) = secrets::value(&secret, &reference.key) else {
            continue;
        };
        let checked = match scheme.scheme {
            Scheme::Amplience => {
                verify::amplience(value, body, header_text("x-amplience-webhook-signature")).map(|()| Signed::Cms)
            }
            Scheme::StandardWebhooks => {
                let tolerance = scheme
                    .tolerance
                    .map(|t| std::time::Duration::from(t).as_secs() as i64)
                    .unwrap_or(300);
                let signed = verify::StandardHeaders {
                    id: header_text("webhook-id"),
                    timestamp: header_text("webhook-timestamp"),
                    signature: header_text("webhook-signature"),
                };
                verify::standard_webhooks(value, &signed, body, Timestamp::now().as_second(), tolerance)
                    .map(Signed::StandardWebhooks)
            }
            Scheme::Bearer => continue,
        };
        match checked {
            Ok(id) => return Ok(id),
            Err(e) if presented || why.is_none() => why = Some(e),
            Err(_) => {}
        }
    }
    // The answer is the one an unknown hub and a wrong token get, so it
    // tells nobody which hubs exist or verify what; the reason is logged.
    let why = why.unwrap_or_else(|| "no bearer token and no signature the hub accepts".into());
    tracing::debug!(namespace, reason = %why, "a request was refused");
    Err(Problem::unauthorized())
}

/// Checks the bearer token against the hub's, in constant time.
async fn authenticate(
    ingest: &Ingest,
    hub: &Hub,
    namespace: &str,
    headers: &HeaderMap,
    token_ref: Option<&crate::resources::SecretKeyRef>,
) -> Result<(), Problem> {
    let unauthorized = Problem::unauthorized;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(unauthorized)?;
    // A hub without a usable token answers as a wrong token does (which
    // hubs exist is not told); the operator finds why in the log and in the
    // Hub's Ready condition.
    let not_ready = |why: String| {
        tracing::warn!(namespace, hub = %kube::ResourceExt::name_any(hub), "an event for a hub that cannot take events yet: {why}");
        unauthorized()
    };
    let token_ref = token_ref
        .cloned()
        .or_else(|| hub.spec.ingest.as_ref().and_then(|i| i.token_secret_ref.clone()))
        .or_else(|| hub.status.as_ref().and_then(|s| s.ingest_token_secret_ref.clone()))
        .ok_or_else(|| not_ready("it has no ingest token yet; is the controller running?".into()))?;
    let secret = ingest
        .secrets
        .get_seen(namespace, &token_ref.name)
        .await
        .map_err(|e| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ApiUnavailable",
                format!("cannot read the hub's token: {e}"),
            )
        })?
        .ok_or_else(|| not_ready(format!("its token Secret {} does not exist", token_ref.name)))?;
    let expected = secrets::value(&secret, &token_ref.key).ok_or_else(|| {
        not_ready(format!(
            "its token Secret {} has no key {}",
            token_ref.name, token_ref.key
        ))
    })?;
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(unauthorized())
    }
}

impl Ingest {
    /// The answer to an event refused because the store is saturated;
    /// counted, and said on the Hub (at most once a minute).
    fn back_off(&self, hub: &Hub, refusal: pressure::Refusal) -> Problem {
        let key = (hub.namespace().unwrap_or_default(), hub.name_any());
        self.metrics
            .ingest_backpressure
            .get_or_create(&crate::metrics::HubLabel {
                namespace: key.0.clone(),
                hub: key.1.clone(),
            })
            .inc();
        let name = &key.1;
        let message = format!(
            "the delivery store is saturated (its writes are slow: {:.1}s per round of creates on average, some still under way): Hub {name} may have {} deliveries being stored at once until it recovers; retry in {}s",
            refusal.latency.as_secs_f64(),
            pressure::IN_FLIGHT_UNDER_PRESSURE,
            refusal.retry_after.as_secs()
        );
        let now = std::time::Instant::now();
        let tell = {
            let mut told = self.told.lock().unwrap_or_else(|e| e.into_inner());
            let due = told
                .get(&key)
                .is_none_or(|at| now.duration_since(*at) >= BACKPRESSURE_EVENT_EVERY);
            if due {
                // Hubs told over a minute ago may be told again anyway:
                // forgotten, so hubs made and deleted do not pile up.
                told.retain(|_, at| now.duration_since(*at) < BACKPRESSURE_EVENT_EVERY);
                told.insert(key.clone(), now);
            }
            due
        };
        if tell {
            tracing::warn!(hub = %key.1, namespace = %key.0, reason = %message, "backpressure");
            crate::kubernetes::warn_later(
                &self.recorder,
                hub.object_ref(&()),
                "Backpressure",
                "Ingest",
                message.clone(),
            );
        }
        let mut problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, "Backpressure", message);
        problem.retry_after = Some(refusal.retry_after.as_secs());
        problem
    }
}

/// How often a Hub is told (an Event) that its events meet backpressure.
const BACKPRESSURE_EVENT_EVERY: Duration = Duration::from_secs(60);

/// Why the store did not take an event. The sender's fault is a 4xx it
/// will not retry; anything else a 503 it will (nothing was accepted
/// either way).
fn refused(e: StoreError) -> Problem {
    match e {
        StoreError::Invalid(message) => Problem::new(
            StatusCode::BAD_REQUEST,
            "InvalidEvent",
            format!("the event cannot be stored: {message}"),
        ),
        StoreError::TooLarge(message) => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "TooLarge",
            format!("the event is too large to store: {message}"),
        ),
        StoreError::Database(e) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "StoreUnavailable",
            format!("the delivery store could not store the event ({e}); retry later"),
        ),
        other => {
            let detail = match other {
                StoreError::Forbidden(message) => format!("403: {message}"),
                StoreError::NotFound(message) => format!("404: {message}"),
                other => other.to_string(),
            };
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ApiUnavailable",
                format!("the Kubernetes API server could not store the event ({detail}); retry later"),
            )
        }
    }
}
