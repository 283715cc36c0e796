//! The Webhook's delivery history in its status (`lastDelivery`,
//! `recentDeliveries`, counters), coalesced: attempts update an in-memory
//! book, and a flusher writes each changed webhook at most once per interval,
//! however many deliveries it had meanwhile.

use crate::resources::delivery::Phase;
use crate::resources::webhook::DeliverySummary;
use crate::resources::{Webhook, WebhookStatus};
use kube::Client;
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// Field manager of these status fields, apart from the reconcilers' so
/// neither's server-side apply removes the other's fields.
pub const FIELD_MANAGER: &str = "hookrelay-delivery-engine";
/// Entries kept in `recentDeliveries`.
pub const RECENT: usize = 20;
/// Longest time a change waits before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// The history fields of a webhook's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub recent: Vec<DeliverySummary>,
    pub succeeded: u64,
    pub failed: u64,
}

impl History {
    fn from_status(status: Option<&WebhookStatus>) -> Self {
        status
            .map(|s| Self {
                recent: s.recent_deliveries.clone(),
                succeeded: s.succeeded.unwrap_or(0),
                failed: s.failed.unwrap_or(0),
            })
            .unwrap_or_default()
    }

    /// Records the latest state of a delivery: its line moves to the top,
    /// and a delivery that just finished counts once.
    pub fn record(&mut self, summary: DeliverySummary, just_finished: bool) {
        if just_finished {
            match summary.outcome {
                Phase::Succeeded => self.succeeded += 1,
                Phase::Failed => self.failed += 1,
                _ => {}
            }
        }
        self.recent.retain(|s| s.id != summary.id);
        self.recent.insert(0, summary);
        self.recent.truncate(RECENT);
    }

    /// The status fields the engine owns.
    fn status_fields(&self) -> serde_json::Value {
        serde_json::json!({
            "lastDelivery": self.recent.first(),
            "recentDeliveries": self.recent,
            "succeeded": self.succeeded,
            "failed": self.failed,
        })
    }
}

struct Book {
    history: History,
    dirty: bool,
}

pub struct Summaries {
    client: Client,
    webhooks: Store<Webhook>,
    books: Mutex<HashMap<(String, String), Book>>,
    changed: Notify,
}

impl Summaries {
    pub fn new(client: Client, webhooks: Store<Webhook>) -> Self {
        Self {
            client,
            webhooks,
            books: Mutex::default(),
            changed: Notify::new(),
        }
    }

    /// Notes a delivery's new state for webhook `name` in `ns`.
    pub fn record(&self, ns: &str, name: &str, summary: DeliverySummary, just_finished: bool) {
        let mut books = self.books.lock().unwrap_or_else(|e| e.into_inner());
        let book = books.entry((ns.to_string(), name.to_string())).or_insert_with(|| {
            // Seeded once from the stored status; afterwards this book is the
            // truth, so a status not yet echoed by the watch loses nothing.
            let stored = self.webhooks.get(&ObjectRef::new(name).within(ns));
            Book {
                history: History::from_status(stored.as_ref().and_then(|w| w.status.as_ref())),
                dirty: false,
            }
        });
        book.history.record(summary, just_finished);
        book.dirty = true;
        self.changed.notify_one();
    }

    /// Forgets a deleted webhook.
    pub fn forget(&self, ns: &str, name: &str) {
        self.books
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(ns.to_string(), name.to_string()));
    }

    /// Writes changed histories, at most once per `FLUSH_INTERVAL` each, forever.
    pub async fn run(&self) {
        loop {
            self.changed.notified().await;
            tokio::time::sleep(FLUSH_INTERVAL).await;
            self.flush().await;
        }
    }

    /// Writes every changed history now.
    pub async fn flush(&self) {
        let dirty: Vec<((String, String), History)> = {
            let mut books = self.books.lock().unwrap_or_else(|e| e.into_inner());
            books
                .iter_mut()
                .filter(|(_, b)| b.dirty)
                .map(|(k, b)| {
                    b.dirty = false;
                    (k.clone(), b.history.clone())
                })
                .collect()
        };
        for ((ns, name), history) in dirty {
            let fields = history.status_fields();
            let written = crate::kubernetes::apply_status::<Webhook>(&self.client, &ns, &name, FIELD_MANAGER, &fields);
            match written.await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => self.forget(&ns, &name),
                Err(e) => {
                    tracing::warn!(webhook = %name, namespace = %ns, error = %e, "could not write delivery history; will retry");
                    if let Some(b) = self
                        .books
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_mut(&(ns, name))
                    {
                        b.dirty = true;
                    }
                    self.changed.notify_one();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn line(id: &str, outcome: Phase) -> DeliverySummary {
        DeliverySummary {
            id: id.into(),
            event: "dynamic-content.content-item.updated".into(),
            time: MicroTime(jiff::Timestamp::now()),
            attempts: 1,
            status_code: Some(200),
            outcome,
        }
    }

    #[test]
    fn newest_first_one_line_per_delivery_at_most_twenty() {
        let mut h = History::default();
        for i in 0..25 {
            h.record(line(&format!("d{i}"), Phase::Succeeded), true);
        }
        assert_eq!(h.recent.len(), RECENT);
        assert_eq!(h.recent[0].id, "d24");
        assert_eq!(h.succeeded, 25);
        h.record(line("d20", Phase::Retrying), false);
        assert_eq!(h.recent[0].id, "d20");
        assert_eq!(h.recent.iter().filter(|s| s.id == "d20").count(), 1);
        assert_eq!(h.recent.len(), RECENT);
    }

    #[test]
    fn finished_deliveries_count_once_by_outcome() {
        let mut h = History::default();
        h.record(line("a", Phase::Retrying), false);
        h.record(line("a", Phase::Failed), true);
        h.record(line("b", Phase::Succeeded), true);
        assert_eq!((h.succeeded, h.failed), (1, 1));
        let fields = h.status_fields();
        assert_eq!(fields["lastDelivery"]["id"], "b");
        assert_eq!(fields["recentDeliveries"].as_array().unwrap().len(), 2);
    }
}
