//! Watching deliveries through the history API (`kubectl get deliveries
//! -w`, the plugin's `tail`, the console's live lists). A watch reads what
//! changed in the store since its position every second (the Postgres
//! store: the rows written by transactions its snapshot did not see) and
//! streams each delivery as it now is, as the Kubernetes API streams watch
//! events. Errors come as in-stream events, as the API server sends them:
//! an `Expired` (410) tells a client to list again.

use super::{Api, Failure, ListQuery, Selector, object, status, store_error, table};
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Watches one process serves at once: each reads the store every second.
pub const MAX_WATCHES: usize = 64;
/// How often a watch reads what changed.
const EVERY: Duration = Duration::from_secs(1);
/// The longest a watch lasts (clients watch again from where they were).
const LONGEST: Duration = Duration::from_secs(30 * 60);
/// How often a quiet watch that asked for bookmarks is told its position.
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);
/// Changed deliveries read from the store in one query: bounds what a
/// watch holds (documents up to the delivery budget each) while it sends.
const READ_TOGETHER: usize = 64;

pub(super) async fn serve(
    api: Api,
    namespace: Option<String>,
    selector: Selector,
    query: ListQuery,
    table: bool,
) -> Result<Response, Failure> {
    let permit = api.watches.clone().try_acquire_owned().map_err(|_| {
        status(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            format!("this server has {MAX_WATCHES} watches open; try again later"),
        )
    })?;
    let now = api.deliveries.position().await.map_err(store_error)?.ok_or_else(|| {
        status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "this store's deliveries are not watched through this API".into(),
        )
    })?;
    // No position given: the newest page of what there is now (as ADDED
    // events), then changes.
    let (start, initial) = match query.resource_version.filter(|rv| !rv.is_empty() && rv != "0") {
        Some(given) => (given, Vec::new()),
        None => (now, api.page(namespace.as_deref(), &selector, None, None).await?.items),
    };
    let timeout = query
        .timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(LONGEST)
        .min(LONGEST);
    let watch = Watch {
        api,
        namespace,
        selector,
        table,
        bookmarks: query.allow_watch_bookmarks.unwrap_or(false),
    };
    let (sender, mut events) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let _permit = permit;
        watch.run(start, initial, Instant::now() + timeout, sender).await;
    });
    let body = futures::stream::poll_fn(move |cx| events.poll_recv(cx)).map(Ok::<_, std::convert::Infallible>);
    Ok(([(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response())
}

struct Watch {
    api: Api,
    namespace: Option<String>,
    selector: Selector,
    table: bool,
    bookmarks: bool,
}

impl Watch {
    /// Streams `initial` (as ADDED), then every change after `position`,
    /// until `deadline` or the client leaves.
    async fn run(self, mut position: String, initial: Vec<Value>, deadline: Instant, sender: mpsc::Sender<Bytes>) {
        for object in initial {
            if sender.send(self.event("ADDED", object, &position)).await.is_err() {
                return;
            }
        }
        let mut quiet_since = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = sender.closed() => return,
            }
            if Instant::now() >= deadline {
                return;
            }
            let (changed, next) = match self
                .api
                .deliveries
                .changed_since(self.namespace.as_deref(), &position)
                .await
            {
                Ok(answer) => answer,
                Err(crate::store::StoreError::Expired(message)) => {
                    let _ = sender.send(line("ERROR", expired(&message))).await;
                    return;
                }
                Err(e) => {
                    // The client watches again from where it was.
                    tracing::warn!(error = %e, "a watch could not read the store; ending it");
                    return;
                }
            };
            let mut told = false;
            for names in changed.chunks(READ_TOGETHER) {
                let read = match self.api.deliveries.get_many(names).await {
                    Ok(read) => read,
                    Err(e) => {
                        tracing::warn!(error = %e, "a watch could not read the store; ending it");
                        return;
                    }
                };
                for delivery in read {
                    let object = object(&delivery);
                    if !self.selector.matches(&object) {
                        continue;
                    }
                    // Never attempted: new to every watcher.
                    let kind = if delivery.status.is_none() { "ADDED" } else { "MODIFIED" };
                    // The position before this read: a client that watches again
                    // from here is told these again rather than missing any.
                    if sender.send(self.event(kind, object, &position)).await.is_err() {
                        return;
                    }
                    told = true;
                }
            }
            position = next;
            if self.bookmarks && (told || quiet_since.elapsed() >= BOOKMARK_EVERY) {
                if sender.send(self.bookmark(&position)).await.is_err() {
                    return;
                }
                quiet_since = Instant::now();
            }
        }
    }

    fn event(&self, kind: &str, mut object: Value, position: &str) -> Bytes {
        object["metadata"]["resourceVersion"] = json!(position);
        if self.table {
            object = table::table(&[object], position, None, jiff::Timestamp::now());
        }
        line(kind, object)
    }

    fn bookmark(&self, position: &str) -> Bytes {
        let object = json!({
            "kind": "Delivery",
            "apiVersion": format!("{}/{}", super::GROUP, super::VERSION),
            "metadata": { "resourceVersion": position },
        });
        line("BOOKMARK", object)
    }
}

fn expired(message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": "Expired", "code": 410,
    })
}

/// One watch event, as a line of JSON.
fn line(kind: &str, object: Value) -> Bytes {
    let mut text = json!({ "type": kind, "object": object }).to_string();
    text.push('\n');
    Bytes::from(text)
}
